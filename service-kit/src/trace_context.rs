//! W3C trace context across process boundaries: gRPC metadata (client interceptor and
//! server-side extraction) and the `traceparent` string carried by queue entries. Driven
//! by the global text-map propagator that [`crate::telemetry::init`] installs.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Writes propagation fields into gRPC metadata.
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Reads propagation fields from HTTP/2 headers (gRPC metadata on the server side).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The OpenTelemetry context carried by request headers (empty if none).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Client interceptor: injects the current span's context into outgoing metadata.
pub fn inject(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
    });
    Ok(req)
}

/// The function-pointer type of [`inject`], for naming intercepted client types.
pub type InjectFn = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// The current span's context as a W3C `traceparent` (empty when there is no valid,
/// sampled-or-not span context, e.g. with tracing off).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    traceparent_of(&cx)
}

/// The `traceparent` of a context (empty when it has no valid span).
pub fn traceparent_of(cx: &opentelemetry::Context) -> String {
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut fields));
    fields.remove("traceparent").unwrap_or_default()
}

/// A context whose remote parent is `traceparent` (empty context when it is absent or
/// malformed: a bad value from a queue entry must never fail the task).
pub fn from_traceparent(traceparent: &str) -> opentelemetry::Context {
    if traceparent.is_empty() || traceparent.len() > 128 {
        return opentelemetry::Context::new();
    }
    let mut fields = HashMap::new();
    fields.insert("traceparent".to_string(), traceparent.to_string());
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&fields))
}

/// The trace id of the current span, as 32 hex digits, if tracing is on.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Displays a trace id as its 32 lower-case hex digits, exactly as `TraceId`'s own
/// `Display` does, without the generic `u128` formatting and padding machinery (it runs
/// for every request span that is logged or exported).
pub struct TraceIdHex(pub opentelemetry::trace::TraceId);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.to_bytes().iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn install() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }

    #[test]
    fn traceparent_round_trips_through_metadata_and_strings() {
        install();
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let tp = traceparent_of(&cx);
        assert_eq!(
            tp,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );

        let mut md = tonic::metadata::MetadataMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(&mut md))
        });
        let headers = md.into_headers();
        let back = extract(&headers);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());

        let again = from_traceparent(&tp);
        assert_eq!(again.span().span_context().trace_id(), sc.trace_id());
    }

    #[test]
    fn malformed_traceparents_give_an_empty_context() {
        install();
        for bad in ["", "garbage", &"0".repeat(500), "00-zz-yy-01"] {
            assert!(
                !from_traceparent(bad).span().span_context().is_valid(),
                "{bad}"
            );
        }
        assert_eq!(traceparent_of(&opentelemetry::Context::new()), "");
    }

    #[test]
    fn trace_id_hex_matches_the_trace_ids_display() {
        for id in [0u128, 1, 0x0af7651916cd43dd8448eb211c80319c, u128::MAX] {
            let id = TraceId::from(id);
            assert_eq!(TraceIdHex(id).to_string(), id.to_string());
        }
    }
}
