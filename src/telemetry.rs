//! Logging: human-readable or JSON lines on stderr (stdout stays free for
//! command output such as a newly created client secret); with the `otlp`
//! feature, spans exported to an OpenTelemetry collector as well.

use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings, TracingSettings};

/// What must outlive the work being logged: shut it down last.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered. Blocking: call outside the runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("thinhook: spans not exported at shutdown: {error}");
        }
    }
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(log: &LogSettings, tracing: &TracingSettings) -> anyhow::Result<Telemetry> {
    // The level filters the log lines only: exported spans do not vanish
    // when the log is quieter.
    let filter: Targets = log.level.parse()?;
    let mut telemetry = Telemetry::default();
    let registry = tracing_subscriber::registry().with(exporter(tracing, &mut telemetry)?);
    match log.format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?,
    }
    Ok(telemetry)
}

/// The layer exporting thinhook's own spans, when an endpoint is set.
#[cfg(feature = "otlp")]
fn exporter<S>(
    settings: &TracingSettings,
    telemetry: &mut Telemetry,
) -> anyhow::Result<Option<impl Layer<S>>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if settings.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let (layer, provider) = crate::otlp::layer(settings)?;
    telemetry.provider = Some(provider);
    // Not the spans of libraries, nor those of the exporter's own client.
    let own = Targets::new().with_target("thinhook", tracing::Level::INFO);
    Ok(Some(layer.with_filter(own)))
}

#[cfg(not(feature = "otlp"))]
fn exporter(
    _: &TracingSettings,
    _: &mut Telemetry,
) -> anyhow::Result<Option<tracing_subscriber::layer::Identity>> {
    Ok(None)
}
