//! Requests above a service's decoding limit are answered `RESOURCE_EXHAUSTED`, as the
//! gRPC status-code table prescribes, instead of the `OUT_OF_RANGE` tonic's decoder
//! reports. Everything else passes through unchanged.

use futures::TryFutureExt as _;
use std::task::{Context, Poll};
use tonic::{Code, Status};

/// Tower layer applying [`OversizeIsResourceExhausted`] to a whole server.
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = OversizeIsResourceExhausted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeIsResourceExhausted { inner }
    }
}

/// The service [`OversizeLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct OversizeIsResourceExhausted<S> {
    inner: S,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<http::Request<B>> for OversizeIsResourceExhausted<S>
where
    S: tower_service::Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(Response) -> Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.inner.call(req).map_ok(relabel_oversize)
    }
}

/// A decoding failure is answered trailers-only: its status is in the headers.
fn relabel_oversize(mut resp: Response) -> Response {
    // Only OUT_OF_RANGE answers are parsed further; every other response costs one compare.
    let out_of_range = resp
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if out_of_range && Status::from_header_map(resp.headers()).is_some_and(|s| is_oversize(&s)) {
        resp.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    resp
}

/// Whether `status` is tonic's "decoded message length too large".
fn is_oversize(status: &Status) -> bool {
    status.code() == Code::OutOfRange
        && status
            .message()
            .contains("decoded message length too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_decoders_oversize_answer_is_relabelled() {
        let oversize = Status::out_of_range("decoded message length too large: 9 > 8").into_http();
        let relabelled = relabel_oversize(oversize);
        let status = Status::from_header_map(relabelled.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);

        let other = Status::out_of_range("page past the end").into_http();
        let kept = relabel_oversize(other);
        let status = Status::from_header_map(kept.headers()).unwrap();
        assert_eq!(status.code(), Code::OutOfRange);
    }

    #[test]
    fn only_the_decoders_size_error_counts_as_oversize() {
        assert!(is_oversize(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes"
        )));
        assert!(!is_oversize(&Status::out_of_range(
            "iteration 7 is out of range"
        )));
        assert!(!is_oversize(&Status::internal(
            "decoded message length too large"
        )));
    }
}
