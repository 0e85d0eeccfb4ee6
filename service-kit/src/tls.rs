//! TLS for the gRPC servers and every outgoing hop: rustls with the ring provider.
//!
//! Certificates and keys are PEM files, read and checked once at start (so a bad file is
//! a one-line configuration error, exit code 2). They are not watched: rotate them by
//! restarting the process. In Kubernetes that is a rolling restart when the Secret
//! changes (a checksum annotation on the pod template, or a reloader), which also keeps
//! every replica on the same material. tonic has no hot swap of a server identity.

use crate::credentials::{SecurityError, read_file, setting_name};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Longest TLS handshake accepted, on either side: a peer that stalls it does not hold a
/// connection slot for longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process-wide rustls crypto provider. Idempotent; call it before any TLS
/// use (redis-rs builds its rustls config from the process default).
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Server TLS flags common to both services.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTlsArgs {
    /// Server certificate chain (PEM file); with --tls-key, gRPC is served over TLS only.
    #[arg(long, env = "TASKROUTER_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM file).
    #[arg(long, env = "TASKROUTER_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM file) that client certificates must chain to: enables mutual
    /// TLS, and clients without such a certificate are refused.
    #[arg(long, env = "TASKROUTER_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

const TLS_CERT: &str = "--tls-cert / TASKROUTER_TLS_CERT";
const TLS_KEY: &str = "--tls-key / TASKROUTER_TLS_KEY";
const TLS_CLIENT_CA: &str = "--tls-client-ca / TASKROUTER_TLS_CLIENT_CA";

impl ServerTlsArgs {
    /// The server TLS config these files describe (`None`: plaintext). Reads and checks
    /// the files now, including that the key belongs to the certificate.
    pub fn load(&self) -> Result<Option<ServerTlsConfig>, SecurityError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                return match self.tls_client_ca {
                    Some(_) => Err(SecurityError::Config(format!(
                        "{TLS_CLIENT_CA}: needs {TLS_CERT} and {TLS_KEY} (mutual TLS is TLS)"
                    ))),
                    None => Ok(None),
                };
            }
            (Some(_), None) => {
                return Err(SecurityError::Config(format!(
                    "{TLS_KEY}: required with {TLS_CERT}"
                )));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Config(format!(
                    "{TLS_CERT}: required with {TLS_KEY}"
                )));
            }
            (Some(c), Some(k)) => (c, k),
        };
        let cert_pem = read_certificates(cert, TLS_CERT)?;
        let key_pem = read_private_key(key, TLS_KEY)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.tls_client_ca {
            config =
                config.client_ca_root(Certificate::from_pem(read_certificates(ca, TLS_CLIENT_CA)?));
        }
        // Building the acceptor is the only way tonic checks the pair; do it now so a key
        // that does not match its certificate fails at start, not on the first handshake.
        install_crypto_provider();
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| {
                SecurityError::Config(format!(
                    "{TLS_CERT} and {TLS_KEY}: unusable ({})",
                    error_chain(&e)
                ))
            })?;
        Ok(Some(config))
    }

    /// Whether TLS is configured (`tls`), and with client certificates (`mtls`).
    pub fn mode(&self) -> &'static str {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "plaintext",
            (Some(_), None) => "tls",
            (Some(_), Some(_)) => "mtls",
        }
    }
}

/// TLS files for one outgoing gRPC hop, as given on a command line.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsFiles {
    /// CA certificates (PEM) the server must chain to; `None` trusts the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the URL's host).
    pub domain: Option<String>,
}

impl ClientTlsFiles {
    /// Reads and checks the files. Errors name the settings as
    /// `{flag_prefix}tls-ca / {ENV_PREFIX}TLS_CA` (e.g. `--router-`, `EXECUTOR_ROUTER_`).
    pub fn load(&self, flag_prefix: &str, env_prefix: &str) -> Result<ClientTls, SecurityError> {
        let name = |n: &str| setting_name(flag_prefix, env_prefix, n);
        let ca = match &self.ca {
            Some(path) => Some(Certificate::from_pem(read_certificates(
                path,
                &name("tls-ca"),
            )?)),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(SecurityError::Config(format!(
                    "{}: required with {}",
                    name("tls-key"),
                    name("tls-cert")
                )));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Config(format!(
                    "{}: required with {}",
                    name("tls-cert"),
                    name("tls-key")
                )));
            }
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read_certificates(c, &name("tls-cert"))?,
                read_private_key(k, &name("tls-key"))?,
            )),
        };
        let domain = match self.domain.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) if d.contains(|c: char| c.is_whitespace() || c == '/') => {
                return Err(SecurityError::Config(format!(
                    "{}: {d:?} is not a host name",
                    name("tls-domain")
                )));
            }
            Some(d) => Some(d.to_string()),
        };
        Ok(ClientTls {
            ca,
            identity,
            domain,
        })
    }
}

/// Loaded TLS settings of one outgoing hop. Empty (the default) means no TLS material
/// beyond the system roots, which `https://` URLs then use.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
    domain: Option<String>,
}

// By hand: tonic's `Identity` derives Debug and would print the private key.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Whether any TLS setting was given (then the URL must be `https://`).
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.domain.is_some()
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The tonic client config: the CA if given, else the system roots.
    pub fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        config = match &self.ca {
            // A private CA replaces the system roots: only it may vouch for the server.
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// An endpoint for `url` that uses `tls`. `https://` verifies the server against the CA in
/// `tls` (the system roots when there is none); `http://` is plaintext and is refused when
/// TLS settings are given, since they would be silently ignored. The error is one line
/// without any password the URL may carry.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, String> {
    let shown = crate::redact::url(url);
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{shown}: not a valid URL ({e})"))?;
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(format!("{shown}: missing host"));
    }
    match endpoint.uri().scheme_str() {
        Some("http") if tls.is_configured() => Err(format!(
            "{shown}: TLS settings are given but the URL is http://; use https://"
        )),
        Some("http") => Ok(endpoint),
        Some("https") => {
            install_crypto_provider();
            endpoint
                .tls_config(tls.client_config())
                .map_err(|e| format!("{shown}: cannot set up TLS ({})", error_chain(&e)))
        }
        Some(other) => Err(format!(
            "{shown}: unsupported scheme {other:?} (use http:// or https://)"
        )),
        None => Err(format!(
            "{shown}: missing scheme (use http://host:port or https://host:port)"
        )),
    }
}

/// Reads a PEM file that must hold at least one certificate (and only valid ones).
pub fn read_certificates(path: &Path, setting: &str) -> Result<Vec<u8>, SecurityError> {
    let bytes = read_file(path, setting)?;
    let invalid = |problem: &str| SecurityError::Invalid {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        cert.map_err(|_| invalid("malformed PEM certificate"))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid("no PEM certificate in the file"));
    }
    Ok(bytes)
}

/// Reads a PEM file that must hold a private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path, setting: &str) -> Result<Vec<u8>, SecurityError> {
    let bytes = read_file(path, setting)?;
    // The parser's error is not shown: it could quote part of the key.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| SecurityError::Invalid {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem: "no PEM private key in the file".to_string(),
    })?;
    Ok(bytes)
}

/// An error and its sources on one line (tonic's own Display is just "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> ServerTlsArgs {
        ServerTlsArgs {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            tls_client_ca: ca.map(PathBuf::from),
        }
    }

    #[test]
    fn no_files_is_plaintext() {
        assert!(args(None, None, None).load().unwrap().is_none());
        assert_eq!(args(None, None, None).mode(), "plaintext");
    }

    #[test]
    fn cert_and_key_come_together() {
        let e = args(Some("/c.pem"), None, None).load().unwrap_err();
        assert!(e.to_string().starts_with("--tls-key"), "{e}");
        let e = args(None, Some("/k.pem"), None).load().unwrap_err();
        assert!(e.to_string().starts_with("--tls-cert"), "{e}");
        let e = args(None, None, Some("/ca.pem")).load().unwrap_err();
        assert!(e.to_string().starts_with("--tls-client-ca"), "{e}");
    }

    #[test]
    fn a_file_without_pem_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let junk = junk.to_str().unwrap();
        let e = args(Some(junk), Some(junk), None).load().unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(TLS_CERT), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn endpoints_check_scheme_and_tls_settings() {
        let plain = ClientTls::default();
        assert!(endpoint("http://127.0.0.1:1", &plain).is_ok());
        for bad in ["", "127.0.0.1:1", "ftp://x:1", "http://"] {
            let e = endpoint(bad, &plain).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        let with_domain = ClientTlsFiles {
            domain: Some("router.internal".into()),
            ..Default::default()
        }
        .load("--router-", "EXECUTOR_ROUTER_")
        .unwrap();
        let e = endpoint("http://router:50051", &with_domain).unwrap_err();
        assert!(e.contains("use https://"), "{e}");
        let e = endpoint("http://user:s3cret@x:1/", &with_domain).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn client_files_name_their_flags() {
        let e = ClientTlsFiles {
            cert: Some("/c.pem".into()),
            ..Default::default()
        }
        .load("--agent-", "EXECUTOR_AGENT_")
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--agent-tls-key / EXECUTOR_AGENT_TLS_KEY: required with --agent-tls-cert / EXECUTOR_AGENT_TLS_CERT"
        );
        let e = ClientTlsFiles {
            ca: Some("/no/ca.pem".into()),
            ..Default::default()
        }
        .load("--router-", "EXECUTOR_ROUTER_")
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--router-tls-ca / EXECUTOR_ROUTER_TLS_CA: cannot read /no/ca.pem"),
            "{e}"
        );
    }
}
