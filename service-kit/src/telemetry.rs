//! Log setup shared by both binaries, and the Prometheus `/metrics` endpoint.
//!
//! Task descriptions can hold patient data: nothing here logs request bodies, and the
//! services log ids, sizes and codes only.

use std::net::SocketAddr;

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
}

/// Telemetry setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--metrics-listen` is not a socket address.
    #[error("--metrics-listen / TASKROUTER_METRICS_LISTEN: {0:?} is not a socket address (e.g. 0.0.0.0:9090)")]
    MetricsAddr(String),
    /// The Prometheus exporter could not start.
    #[error("--metrics-listen: cannot start the metrics endpoint: {0}")]
    Metrics(String),
}

/// Installs the global log subscriber writing to stderr (filter from `RUST_LOG`, default `info`).
/// Safe to call more than once: later calls are ignored, which tests rely on.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // stdout stays free for command output (e.g. `--check-config`).
        .with_writer(std::io::stderr);
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
        let err = metrics_addr("nope").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--metrics-listen"), "{err}");
    }
}
