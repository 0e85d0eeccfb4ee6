//! The loaded security settings of one outgoing gRPC hop (TLS plus bearer token), on top
//! of [`crate::tls`] and [`crate::auth`]; re-exports the shared pieces of
//! [`crate::credentials`] so callers find every security type in one place.

use crate::auth::{BearerToken, ClientInterceptor};
use crate::tls::ClientTls;

pub use crate::credentials::{MAX_FILE_BYTES, Secret, SecurityError, read_file, setting_name};

/// The TLS settings and bearer token of one outgoing gRPC hop (executor to router,
/// executor to a remote agent, a CLI to either service).
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// TLS trust and client identity; empty for plaintext `http://`.
    pub tls: ClientTls,
    /// Token sent as `authorization: Bearer ...`, if any.
    pub token: Option<BearerToken>,
}

impl ClientSecurity {
    /// An endpoint for `url` with these TLS settings (see [`crate::tls::endpoint`]).
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, String> {
        crate::tls::endpoint(url, &self.tls)
    }

    /// The client interceptor: trace context plus the token, if any.
    pub fn interceptor(&self) -> ClientInterceptor {
        ClientInterceptor::new(self.token.as_ref())
    }
}
