//! Observation of every gRPC call a server answers: one span per request (RPC semantic
//! conventions, parented on the caller's W3C trace context) and, per call, its status
//! code on that span and in `taskrouter_rpc_duration_seconds{service,method,code}`.
//! Request bodies are never recorded.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The server span of one gRPC request.
pub fn request_span(req: &http::Request<()>) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let path = req.uri().path();
    let (service, method) = crate::grpc_path::split(path);
    let (host, port) = req
        .uri()
        .authority()
        .map(|a| (a.host(), a.port_u16().unwrap_or(0)))
        .unwrap_or_default();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = %host,
        server.port = port,
        trace_id = tracing::field::Empty,
    );
    // A disabled span (filtered out, no exporter) needs no context work at all.
    if span.is_disabled() {
        return span;
    }
    // Without a `traceparent` there is no caller context to continue (W3C is the only
    // propagator): skip the propagator's lock and header parsing.
    let parent = if req.headers().contains_key("traceparent") {
        crate::trace_context::extract(req.headers())
    } else {
        opentelemetry::Context::new()
    };
    let remote = parent.span().span_context().clone();
    let _ = span.set_parent(parent);
    let own = span.context().span().span_context().clone();
    let trace = if own.is_valid() { own } else { remote };
    if trace.is_valid() {
        span.record(
            "trace_id",
            tracing::field::display(crate::trace_context::TraceIdHex(trace.trace_id())),
        );
    }
    span
}

/// Tower layer observing every call of a server (see the module docs). `services` are the
/// names metrics may carry; any other path is labelled `unknown`, so caller-chosen paths
/// cannot make label values unbounded.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    services: Arc<[&'static str]>,
}

impl ObserveLayer {
    /// Observes calls, labelling the given service names.
    pub fn new(services: impl Into<Arc<[&'static str]>>) -> Self {
        Self {
            services: services.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            services: self.services.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
    services: Arc<[&'static str]>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Observed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = crate::grpc_path::split(req.uri().path());
        let label = self.services.iter().copied().find(|s| *s == service);
        // Only known services' methods become labels; the string is made once per call.
        let labels = label.map(|s| (s, method.to_string()));
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // Errors are sent trailers-only, so their status is in the headers; a
            // response without one is OK (a stream's final status is not known yet).
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from)
                .unwrap_or(tonic::Code::Ok);
            let span = tracing::Span::current();
            if !span.is_disabled() {
                span.record("rpc.grpc.status_code", code as i32);
                if is_server_error(code) {
                    span.record("otel.status_code", "ERROR");
                }
            }
            let (service, method) = match labels {
                Some((s, m)) if code != tonic::Code::Unimplemented => (s, m),
                _ => ("unknown", "unknown".to_string()),
            };
            metrics::histogram!(
                "taskrouter_rpc_duration_seconds",
                "service" => service,
                "method" => method,
                "code" => code_name(code),
            )
            .record(started.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

/// Codes that mark a server-side failure (per the RPC semantic conventions).
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// The code's name as the `code` label spells it (its `Debug` form, without formatting).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_match_the_debug_names() {
        for n in 0..=16 {
            let code = tonic::Code::from(n);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
