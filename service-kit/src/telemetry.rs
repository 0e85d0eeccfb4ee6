//! Logging, tracing and metrics setup shared by both binaries.
//!
//! - Logs: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//!   Request and task spans carry a `trace_id` field, so every line logged inside them
//!   names its trace. Lines go to a buffer that a writer thread writes in batches
//!   ([`crate::log_writer`]), so a request never waits for stderr;
//!   [`TelemetryGuard::shutdown`] (or dropping the guard) flushes what is left.
//!   Decision lines can be sampled (see [`crate::log_sampling`]). When stderr is not a
//!   terminal, text lines are written by [`crate::log_format`] (the same bytes as the
//!   default format, without its styling work). Spans whose target ends in
//!   [`TRACE_ONLY_TARGET_SUFFIX`] are left out of the log.
//! - Traces: OpenTelemetry over OTLP/gRPC, configured only by `OTEL_*` variables, and off
//!   unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set. Which spans are exported is `OTEL_TRACES_FILTER`'s choice (same syntax as
//!   `RUST_LOG`; default [`DEFAULT_TRACE_FILTER`], the services' own spans), independent
//!   of the log filter: `RUST_LOG=debug` does not export h2/hyper/tonic connection spans.
//!   W3C trace context is always propagated, so a caller's trace continues through the
//!   services either way.
//! - Metrics: Prometheus text on `--metrics-listen` (`GET /metrics`).
//!
//! Task descriptions can hold patient data: nothing here records request bodies; the
//! services log and trace ids, sizes and codes only.

use opentelemetry::trace::TracerProvider as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging and metrics flags common to both services.
#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "TASKROUTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the Prometheus `/metrics` HTTP endpoint; empty disables it.
    #[arg(long, env = "TASKROUTER_METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,
    /// Write one in N routing-decision log lines (`task routed`): 1 writes every one, 0
    /// none. Metrics and traces still count every decision.
    #[arg(long, env = "TASKROUTER_LOG_DECISIONS_EVERY", default_value_t = 1)]
    pub log_decisions_every: u64,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            metrics_listen: String::new(),
            log_decisions_every: 1,
        }
    }
}

/// Spans exported when `OTEL_TRACES_FILTER` is unset: the services' own, at info.
pub const DEFAULT_TRACE_FILTER: &str = "router_service=info,executor_service=info,service_kit=info";
/// Environment variable choosing the exported spans (`RUST_LOG` syntax).
pub const TRACE_FILTER_ENV: &str = "OTEL_TRACES_FILTER";
/// Spans buffered for export when `OTEL_BSP_MAX_QUEUE_SIZE` is unset: the SDK's 2,048
/// overflows (and drops spans) within a fraction of a second at full load.
const DEFAULT_BSP_MAX_QUEUE_SIZE: usize = 16_384;
/// Spans per export request when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` is unset: fewer, larger
/// requests cost the exporter less per span (2,048 spans stay far below 4 MiB).
const DEFAULT_BSP_MAX_EXPORT_BATCH_SIZE: usize = 2_048;

/// Telemetry setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--metrics-listen` is not a socket address.
    #[error(
        "--metrics-listen / TASKROUTER_METRICS_LISTEN: {0:?} is not a socket address (e.g. 0.0.0.0:9090)"
    )]
    MetricsAddr(String),
    /// The Prometheus exporter could not start.
    #[error("--metrics-listen: cannot start the metrics endpoint: {0}")]
    Metrics(String),
    /// `OTEL_TRACES_FILTER` is not a filter.
    #[error("OTEL_TRACES_FILTER: {0}")]
    TraceFilter(String),
    /// The log writer thread could not be started.
    #[error("log writer: cannot start its thread: {0}")]
    LogWriter(String),
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {0}")]
    Otlp(String),
}

/// Keeps the trace pipeline alive; [`TelemetryGuard::shutdown`] flushes it.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Flushes the log writer thread when dropped.
    log_writer: Option<crate::log_writer::WriterGuard>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans and stops the exporter, then flushes the log.
    pub fn shutdown(self) {
        let Self {
            provider,
            log_writer,
        } = self;
        if let Some(p) = provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "flushing spans failed");
            }
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "stopping the span exporter failed");
            }
        }
        drop(log_writer);
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the `OTEL_*` variables ask for trace export.
pub fn otlp_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging (and trace export when requested) for `service_name` (used when
/// `OTEL_SERVICE_NAME` is unset). Must run inside the Tokio runtime: the OTLP exporter's
/// gRPC channel is bound to it, and built outside it would silently export nothing.
/// Later calls in the same process only return a non-exporting guard (tests rely on it).
pub fn init(service_name: &str, args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, args, "info")
}

/// Like [`init`] with default flags, and `default_filter` as the log filter when
/// `RUST_LOG` is unset.
pub fn init_with_filter(
    service_name: &str,
    format: LogFormat,
    default_filter: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let args = TelemetryArgs {
        log_format: format,
        ..TelemetryArgs::default()
    };
    install(service_name, &args, default_filter)
}

fn install(
    service_name: &str,
    args: &TelemetryArgs,
    default_filter: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let format = args.log_format;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (provider, trace_filter) = if otlp_requested() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !env_set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name(service_name.to_string());
        }
        // Sampler from OTEL_TRACES_SAMPLER[_ARG]; batch settings from OTEL_BSP_*.
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch_config())
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_span_processor(processor)
            .build();
        (Some(provider), Some(trace_filter()?))
    } else {
        (None, None)
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Lines are written in batches by a thread of their own (`log_writer`).
    let (writer, log_writer) =
        crate::log_writer::BatchWriter::spawn(std::io::stderr(), "log-writer")
            .map_err(|e| TelemetryError::LogWriter(e.to_string()))?;
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true);
    let fmt = match format {
        // The same line, written without the default format's styling work.
        LogFormat::Text if !ansi => fmt
            .fmt_fields(crate::log_format::PlainFields)
            .event_format(crate::log_format::PlainText::default())
            .boxed(),
        LogFormat::Text => fmt.boxed(),
        // The current span names the request and task; the full span list would repeat
        // its fields on every line.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let filter = filter
        .and(crate::log_sampling::DecisionSampler::new(
            args.log_decisions_every,
        ))
        .and(
            tracing_subscriber::filter::filter_fn(|meta| !is_trace_only(meta))
                .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE),
        );
    // Each layer has its own filter: logs follow RUST_LOG, exported spans
    // OTEL_TRACES_FILTER. Per-span work is kept to what the backend shows: no thread
    // names (an allocation per span), no source locations (the target names the
    // module), no busy/idle timing (two clock reads per poll). No context activation
    // either: nothing here reads `opentelemetry::Context::current()` (parents and
    // propagation go through the tracing span, see `trace_context`), and attaching the
    // span's context on every poll cost a clone and a thread-local push and pop.
    let otel = provider.as_ref().zip(trace_filter).map(|(p, f)| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("taskrouter"))
            .with_error_records_to_exceptions(true)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(f.and(RepeatedDecisions))
    });
    // Without an exporter the subscriber has no OpenTelemetry layer at all: an absent
    // (`None`) layer still claims interest in every call site, which made the registry
    // build every h2/hyper trace-level span (about 50 per request) only for the log
    // filter to drop them.
    let logs = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let installed = match otel {
        Some(otel) => logs.with(otel).try_init().is_ok(),
        None => logs.try_init().is_ok(),
    };
    match provider {
        Some(p) if installed => {
            opentelemetry::global::set_tracer_provider(p.clone());
            Ok(TelemetryGuard {
                provider: Some(p),
                log_writer: Some(log_writer),
            })
        }
        _ if installed => Ok(TelemetryGuard {
            provider: None,
            log_writer: Some(log_writer),
        }),
        _ => Ok(TelemetryGuard {
            provider: None,
            log_writer: None,
        }),
    }
}

/// Spans whose target ends in this are for traces only: logs leave them out (their
/// fields are repeated by a log line of their own, e.g. the router's decision line), so
/// no log formatting is spent on them.
pub const TRACE_ONLY_TARGET_SUFFIX: &str = "::trace_only";

/// Whether `meta` is a span only traces record (see [`TRACE_ONLY_TARGET_SUFFIX`]).
fn is_trace_only(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().ends_with(TRACE_ONLY_TARGET_SUFFIX)
}

/// Per-layer filter of the exported spans: a decision line inside a trace-only span
/// (which carries the decision as attributes) is not exported as a span event, which
/// would repeat those attributes and cost as much as a span. Every other event and span
/// passes; only decision call sites are asked per event.
struct RepeatedDecisions;

impl<S> tracing_subscriber::layer::Filter<S> for RepeatedDecisions
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !crate::log_sampling::is_decision_line(meta)
            || !cx
                .lookup_current()
                .is_some_and(|span| is_trace_only(span.metadata()))
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if crate::log_sampling::is_decision_line(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}

/// The exported-span filter: `OTEL_TRACES_FILTER`, or [`DEFAULT_TRACE_FILTER`].
fn trace_filter() -> Result<EnvFilter, TelemetryError> {
    match std::env::var(TRACE_FILTER_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v.trim()).map_err(|e| TelemetryError::TraceFilter(e.to_string()))
        }
        _ => Ok(EnvFilter::new(DEFAULT_TRACE_FILTER)),
    }
}

/// `OTEL_BSP_*` where set; otherwise the SDK's defaults but for a larger queue and batch.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    let mut b = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if !env_set("OTEL_BSP_MAX_QUEUE_SIZE") {
        b = b.with_max_queue_size(DEFAULT_BSP_MAX_QUEUE_SIZE);
    }
    if !env_set("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        b = b.with_max_export_batch_size(DEFAULT_BSP_MAX_EXPORT_BATCH_SIZE);
    }
    b.build()
}

/// Installs only logging (no trace export); kept for tools and tests.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Parses the metrics address flag; `None` when disabled.
pub fn metrics_addr(raw: &str) -> Result<Option<SocketAddr>, TelemetryError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| TelemetryError::MetricsAddr(raw.to_string()))
}

/// Starts the Prometheus exporter on `addr` (HTTP `GET /metrics`) and installs it as
/// the global `metrics` recorder. Must run inside a Tokio runtime.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), TelemetryError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0,
        ])
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .install()
        .map_err(|e| TelemetryError::Metrics(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_parses_or_names_the_setting() {
        assert_eq!(metrics_addr("").ok(), Some(None));
        assert!(metrics_addr("127.0.0.1:9090").is_ok_and(|a| a.is_some()));
        let err = metrics_addr("nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--metrics-listen"), "{err}");
    }
}
