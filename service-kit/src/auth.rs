//! Optional bearer-token authentication, and who is calling.
//!
//! Identities: with `--auth-tokens-file`, each line `name token [roles…]` names a
//! token's holder and its roles (`#` starts a comment); a line whose token is `-` gives
//! roles to a mutual-TLS client certificate whose subject common name is `name` (a
//! caller presenting no token is then identified by its certificate). The single
//! `--auth-token-file` token identifies as `token`, without roles. The identity reaches
//! handlers as an [`Identity`] in the request extensions.
//!
//! Server side, [`AuthLayer`] runs before every handler: a call must carry
//! `authorization: Bearer <token>` matching the configured token (compared in constant
//! time over SHA-256 digests, so neither content nor length leaks through timing), or it
//! ends with `UNAUTHENTICATED` and a generic message. `grpc.health.v1.Health` stays open
//! for probes; reflection needs the token. Client side, [`ClientInterceptor`] sends the
//! token and the W3C trace context. Tokens are never logged.

use crate::credentials::{Secret, SecurityError, read_file};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq as _;
use tonic::metadata::{Ascii, MetadataValue};

/// The metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";
/// Environment variable holding the servers' token itself (the file flag is preferred).
pub const AUTH_TOKEN_ENV: &str = "TASKROUTER_AUTH_TOKEN";
/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Longest token accepted (it travels in a header on every call).
pub const MAX_TOKEN_CHARS: usize = 4096;
/// The message of every rejection: the same whether the token was missing or wrong.
pub const REJECTION: &str = "missing or invalid bearer token";
/// gRPC services reachable without a token.
const OPEN_SERVICES: [&str; 1] = ["/grpc.health.v1.Health/"];

/// Who is calling, as authentication established it; handlers read it from the
/// request extensions. Absent when authentication is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name of the token's entry, or the client certificate's subject.
    pub name: String,
    /// Roles granted to it (e.g. `approver`).
    pub roles: Vec<String>,
}

impl Identity {
    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Token field of a tokens-file line that grants roles to a certificate subject.
pub const CERTIFICATE_ONLY: &str = "-";
/// Identity name of the single `--auth-token-file` token.
pub const SINGLE_TOKEN_NAME: &str = "token";

/// Everything a server accepts as authentication: named tokens with roles, and roles of
/// client-certificate subjects. Never printed with its tokens.
#[derive(Clone, Default)]
pub struct Credentials {
    tokens: Vec<(Identity, BearerToken)>,
    subjects: Vec<Identity>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tokens", &self.tokens.len())
            .field("subjects", &self.subjects.len())
            .finish()
    }
}

impl Credentials {
    /// Only the single token, as identity [`SINGLE_TOKEN_NAME`] without roles.
    pub fn single(token: BearerToken) -> Self {
        Self {
            tokens: vec![(
                Identity {
                    name: SINGLE_TOKEN_NAME.to_string(),
                    roles: Vec::new(),
                },
                token,
            )],
            subjects: Vec::new(),
        }
    }

    /// Parses a tokens file (`name token [roles…]` per line). The error names the line,
    /// never a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut c = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(token)) = (words.next(), words.next()) else {
                return Err(format!("line {}: expected `name token [roles...]`", i + 1));
            };
            if name.len() > 256 {
                return Err(format!("line {}: the name is longer than 256 bytes", i + 1));
            }
            if c.tokens.iter().any(|(id, _)| id.name == name)
                || c.subjects.iter().any(|id| id.name == name)
            {
                return Err(format!("line {}: the name {name:?} is listed twice", i + 1));
            }
            let identity = Identity {
                name: name.to_string(),
                roles: words.map(str::to_string).collect(),
            };
            if token == CERTIFICATE_ONLY {
                c.subjects.push(identity);
            } else {
                let token = BearerToken::new(token)
                    .map_err(|problem| format!("line {} ({name}): {problem}", i + 1))?;
                c.tokens.push((identity, token));
            }
        }
        if c.tokens.is_empty() && c.subjects.is_empty() {
            return Err("lists no identity".into());
        }
        Ok(c)
    }

    /// The identity whose token an `authorization` value presents. Every token is
    /// compared (each in constant time), so the time taken does not depend on which.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Option<&Identity> {
        let mut found = None;
        for (identity, token) in &self.tokens {
            if token.verify(authorization) && found.is_none() {
                found = Some(identity);
            }
        }
        found
    }

    /// The identity granted to a client certificate with this subject common name.
    pub fn subject(&self, common_name: &str) -> Option<&Identity> {
        self.subjects.iter().find(|id| id.name == common_name)
    }
}

/// The subject common name of the first client certificate of a TLS connection.
fn client_common_name<B>(req: &http::Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let der = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// A bearer token. Holds only its digest and the ready header value; never printed.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
    header: MetadataValue<Ascii>,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// A token from its text (surrounding whitespace, e.g. a file's final newline, is
    /// dropped). It must be 16 to 4096 visible ASCII characters. The error never quotes it.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the token must be at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(format!(
                "the token must be at most {MAX_TOKEN_CHARS} characters"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be visible ASCII without spaces (it is sent in a header)".into(),
            );
        }
        let mut header: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        // Keeps it out of HTTP/2 header compression tables and debug output.
        header.set_sensitive(true);
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            header,
        })
    }

    /// The token from `file` (read now) or else `env` (the value of `env_name`); `None`
    /// when neither is set, an error when both are. Errors name the setting.
    pub fn resolve(
        file: Option<&Path>,
        file_setting: &str,
        env: Option<&Secret>,
        env_name: &str,
    ) -> Result<Option<Self>, SecurityError> {
        match (file, env) {
            (Some(_), Some(_)) => Err(SecurityError::Config(format!(
                "{file_setting}: set either it or {env_name}, not both"
            ))),
            (Some(path), None) => {
                let bytes = read_file(path, file_setting)?;
                let text = std::str::from_utf8(&bytes).map_err(|_| SecurityError::Invalid {
                    setting: file_setting.to_string(),
                    path: path.to_path_buf(),
                    problem: "the token must be visible ASCII".into(),
                })?;
                Self::new(text)
                    .map(Some)
                    .map_err(|problem| SecurityError::Invalid {
                        setting: file_setting.to_string(),
                        path: path.to_path_buf(),
                        problem,
                    })
            }
            (None, Some(secret)) => Self::new(secret.expose())
                .map(Some)
                .map_err(|problem| SecurityError::Config(format!("{env_name}: {problem}"))),
            (None, None) => Ok(None),
        }
    }

    /// Whether an `authorization` header value presents this token (`Bearer <token>`,
    /// the scheme case-insensitive). Constant time in the presented token.
    pub fn verify(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(presented) = strip_bearer(value) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(digest.ct_eq(&self.digest))
    }

    /// The `authorization` metadata value a client sends (marked sensitive).
    pub fn metadata_value(&self) -> MetadataValue<Ascii> {
        self.header.clone()
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// Server authentication flags common to both services.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerAuthArgs {
    /// File holding the bearer token every call but health must present (`authorization:
    /// Bearer <token>`); the token may instead be set in TASKROUTER_AUTH_TOKEN. Unset: no
    /// authentication.
    #[arg(long, env = "TASKROUTER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The token itself, from TASKROUTER_AUTH_TOKEN: environment only, since a flag value
    /// would show in `ps`.
    #[arg(skip = Secret::from_env(AUTH_TOKEN_ENV))]
    pub auth_token: Option<Secret>,
    /// File of identities: one `name token [roles...]` per line (`-` as the token gives
    /// the roles to a mutual-TLS client certificate whose subject CN is `name`). Role
    /// `approver` may call Approve and Reject. Unset with no token: no authentication.
    #[arg(long, env = "TASKROUTER_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
}

const TOKENS_FILE_SETTING: &str = "--auth-tokens-file / TASKROUTER_AUTH_TOKENS_FILE";

impl ServerAuthArgs {
    /// What calls must present, if authentication is on. Reads the files now.
    pub fn load(&self) -> Result<Option<Credentials>, SecurityError> {
        let single = BearerToken::resolve(
            self.auth_token_file.as_deref(),
            "--auth-token-file / TASKROUTER_AUTH_TOKEN_FILE",
            self.auth_token.as_ref(),
            AUTH_TOKEN_ENV,
        )?;
        let Some(path) = &self.auth_tokens_file else {
            return Ok(single.map(Credentials::single));
        };
        if single.is_some() {
            return Err(SecurityError::Config(format!(
                "{TOKENS_FILE_SETTING}: set either it or --auth-token-file / {AUTH_TOKEN_ENV}, not both"
            )));
        }
        let bytes = read_file(path, TOKENS_FILE_SETTING)?;
        let invalid = |problem: String| SecurityError::Invalid {
            setting: TOKENS_FILE_SETTING.to_string(),
            path: path.clone(),
            problem,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        Credentials::parse(text).map(Some).map_err(invalid)
    }

    /// Whether any authentication is configured.
    pub fn is_on(&self) -> bool {
        self.auth_token_file.is_some()
            || self.auth_token.is_some()
            || self.auth_tokens_file.is_some()
    }
}

/// Whether `path` (`/package.Service/Method`) is served without a token.
pub fn is_open_path(path: &str) -> bool {
    OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix))
}

/// Tower layer that checks the bearer token before any handler runs (a no-op without a
/// token). The server builder applies it to the whole server, so a service added later
/// cannot forget it.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    token: Option<Arc<Credentials>>,
}

impl AuthLayer {
    /// Requires `credentials` on every call but health; `None` lets every call through.
    pub fn new(credentials: Option<Credentials>) -> Self {
        Self {
            token: credentials.map(Arc::new),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    token: Option<Arc<Credentials>>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let identity = self.token.as_ref().and_then(|c| {
            c.verify(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
                .or_else(|| client_common_name(&req).and_then(|cn| c.subject(&cn)))
                .cloned()
        });
        if let Some(identity) = identity {
            req.extensions_mut().insert(identity);
        } else if self.token.is_some() && !is_open_path(req.uri().path()) {
            let (service, _) = crate::grpc_path::split(req.uri().path());
            // The service name only: paths of unknown services are caller-chosen text.
            tracing::debug!(rpc.service = %service.chars().take(64).collect::<String>(), "call rejected: {REJECTION}");
            // The observation layer outside this one records the status on the span.
            metrics::counter!("taskrouter_auth_rejected_total").increment(1);
            let response = tonic::Status::unauthenticated(REJECTION).into_http();
            return futures::future::Either::Right(futures::future::ready(Ok(response)));
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

/// Client interceptor for every outgoing call: injects the W3C trace context (as
/// [`crate::trace_context::inject`]) and, when configured, the bearer token.
#[derive(Clone, Default)]
pub struct ClientInterceptor {
    authorization: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for ClientInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInterceptor")
            .field("token", &self.authorization.is_some())
            .finish()
    }
}

impl ClientInterceptor {
    /// An interceptor sending `token` (if any) on every call.
    pub fn new(token: Option<&BearerToken>) -> Self {
        Self {
            authorization: token.map(BearerToken::metadata_value),
        }
    }
}

impl tonic::service::Interceptor for ClientInterceptor {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = crate::trace_context::inject(req)?;
        if let Some(value) = &self.authorization {
            req.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tokens_file_names_identities_and_their_roles() {
        let other = "fedcba9876543210fedcba9876543210";
        let c = Credentials::parse(&format!(
            "# who may do what\nalice {TOKEN} approver\n\nci {other}  # no roles\nops-cert - approver\n"
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains(TOKEN));
        let alice = c
            .verify(Some(format!("Bearer {TOKEN}").as_bytes()))
            .unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.has_role("approver"));
        let ci = c
            .verify(Some(format!("Bearer {other}").as_bytes()))
            .unwrap();
        assert_eq!(ci.name, "ci");
        assert!(!ci.has_role("approver"));
        assert!(c.verify(Some(b"Bearer nope-nope-nope-nope")).is_none());
        assert!(c.subject("ops-cert").unwrap().has_role("approver"));
        assert!(c.subject("alice").is_none());
    }

    #[test]
    fn bad_tokens_files_name_the_line_and_never_the_token() {
        for (text, expect) in [
            ("alice\n", "line 1: expected"),
            (
                &format!("a {TOKEN}\nb short\n") as &str,
                "line 2 (b): the token must be",
            ),
            (
                &format!("a {TOKEN}\na {TOKEN}x\n"),
                "line 2: the name \"a\" is listed twice",
            ),
            ("# nothing\n", "lists no identity"),
        ] {
            let e = Credentials::parse(text).unwrap_err();
            assert!(e.starts_with(expect), "{text:?} -> {e}");
            assert!(!e.contains(TOKEN) && !e.contains("short"), "{e}");
        }
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = BearerToken::new(&format!("  {TOKEN}\n")).unwrap();
        assert!(!format!("{t:?}").contains(TOKEN));
        assert!(t.verify(Some(format!("Bearer {TOKEN}").as_bytes())));
        assert!(t.verify(Some(format!("bearer {TOKEN}").as_bytes())));
        assert!(!t.verify(None));
        assert!(!t.verify(Some(TOKEN.as_bytes())));
        assert!(!t.verify(Some(b"Bearer ")));
        assert!(!t.verify(Some(format!("Bearer {TOKEN}x").as_bytes())));
        assert!(!t.verify(Some(format!("Basic {TOKEN}").as_bytes())));
    }

    #[test]
    fn weak_or_unsendable_tokens_are_refused() {
        assert!(BearerToken::new("short").is_err());
        assert!(BearerToken::new("has a space in the middle of it").is_err());
        assert!(BearerToken::new(&"é".repeat(20)).is_err());
        let e = BearerToken::new("short").unwrap_err();
        assert!(!e.contains("short"), "{e}");
    }

    #[test]
    fn file_and_env_are_exclusive_and_named() {
        let secret = Secret::new(TOKEN);
        let e = BearerToken::resolve(
            Some(Path::new("/t")),
            "--auth-token-file / TASKROUTER_AUTH_TOKEN_FILE",
            Some(&secret),
            AUTH_TOKEN_ENV,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--auth-token-file"), "{e}");
        let weak = Secret::new("weak");
        let e = BearerToken::resolve(None, "--auth-token-file", Some(&weak), AUTH_TOKEN_ENV)
            .unwrap_err();
        assert!(e.to_string().starts_with(AUTH_TOKEN_ENV), "{e}");
        assert!(!e.to_string().contains("weak"), "{e}");
        let ok = BearerToken::resolve(None, "--auth-token-file", Some(&secret), AUTH_TOKEN_ENV)
            .unwrap()
            .unwrap();
        assert!(ok.verify(Some(format!("Bearer {TOKEN}").as_bytes())));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let from_file = BearerToken::resolve(Some(&file), "--auth-token-file", None, "X")
            .unwrap()
            .unwrap();
        assert!(from_file.verify(Some(format!("Bearer {TOKEN}").as_bytes())));
    }

    #[test]
    fn only_health_is_open() {
        assert!(is_open_path("/grpc.health.v1.Health/Check"));
        assert!(is_open_path("/grpc.health.v1.Health/Watch"));
        assert!(!is_open_path(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_open_path("/taskrouter.v1.Router/Route"));
        assert!(!is_open_path("/grpc.health.v1.HealthX/Check"));
    }

    #[test]
    fn the_interceptor_sends_the_token() {
        let t = BearerToken::new(TOKEN).unwrap();
        let mut i = ClientInterceptor::new(Some(&t));
        assert!(!format!("{i:?}").contains(TOKEN));
        let req = i.call(tonic::Request::new(())).unwrap();
        let v = req.metadata().get(AUTHORIZATION).unwrap();
        assert_eq!(v.to_str().unwrap(), format!("Bearer {TOKEN}"));
        let mut none = ClientInterceptor::default();
        let req = none.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get(AUTHORIZATION).is_none());
    }
}
