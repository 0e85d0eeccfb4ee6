//! The policy in a Kubernetes ConfigMap, changed through the API server from inside a pod.
//!
//! [`ConfigMapWriter`] reads one key of the ConfigMap the routers mount and replaces it by
//! read-modify-write: GET the object, set the key, PUT it back carrying the
//! `metadata.resourceVersion` it read. The API server refuses that PUT with 409 Conflict
//! when anything changed the ConfigMap in between, so a concurrent edit is never
//! overwritten: the write fails with [`Error::Conflict`] and the controller tries again at
//! its next check. Other keys, labels and annotations go back as they were read.
//!
//! In-cluster settings follow the Kubernetes convention (as client-go's
//! `rest.InClusterConfig`): `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` and the
//! service-account directory holding `token`, `ca.crt` and `namespace`. The token is
//! re-read on every call, since the kubelet rotates projected tokens, and is never logged
//! nor put in an error; the CA is re-read too, for CA rotation.
//!
//! The client is hyper's HTTP/1 connection over rustls, both already built for tonic: one
//! short-lived connection per call, and a step makes two or three calls.

use crate::error::{Error, Result};
use crate::writer::{PolicyWriter, validate};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where Kubernetes mounts a pod's service-account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Longest wait for one API call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read; a ConfigMap holds at most 1 MiB of data.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Longest server message quoted in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// `NAMESPACE/NAME` of a ConfigMap, or `NAME` in the pod's own namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapRef {
    /// The namespace; `None` means the pod's (the service-account `namespace` file).
    pub namespace: Option<String>,
    /// The ConfigMap's name.
    pub name: String,
}

impl std::str::FromStr for ConfigMapRef {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (namespace, name) = match s.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, s),
        };
        // Both end up in the request path: only DNS-style names, so nothing can escape it.
        if let Some(ns) = namespace {
            check_name(ns, 63, "namespace")?;
        }
        check_name(name, 253, "name")?;
        Ok(Self {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        })
    }
}

fn check_name(s: &str, max: usize, what: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.', at most {max})"
        ))
    }
}

/// A ConfigMap key: letters, digits, `-`, `_` and `.`, as the API server requires.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    if !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(())
    } else {
        Err(format!("{key:?} is not a ConfigMap key"))
    }
}

/// How to reach the API server: address, and the files holding the token and the CA.
#[derive(Clone, Debug)]
pub struct ApiServer {
    host: String,
    port: u16,
    token_file: PathBuf,
    ca_file: PathBuf,
}

impl ApiServer {
    /// The API server at `host:port`, authenticated with the token in `token_file` and
    /// trusted through the CA certificates in `ca_file`. Both files are read on each call.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        token_file: impl Into<PathBuf>,
        ca_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            token_file: token_file.into(),
            ca_file: ca_file.into(),
        }
    }

    /// The in-cluster API server: host and port from the service environment variables
    /// (`host`, `port`: their values), credentials from `account_dir`. Checks now that the
    /// token and the CA can be read, so a pod without them fails at start.
    pub fn in_cluster(
        host: Option<&str>,
        port: Option<&str>,
        account_dir: &Path,
    ) -> std::result::Result<Self, String> {
        let host = host
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or("KUBERNETES_SERVICE_HOST is not set (not running in a Kubernetes pod?)")?;
        let port = port
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or("KUBERNETES_SERVICE_PORT is not set (not running in a Kubernetes pod?)")?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("KUBERNETES_SERVICE_PORT {port:?} is not a port number"))?;
        let api = Self::new(
            host,
            port,
            account_dir.join("token"),
            account_dir.join("ca.crt"),
        );
        api.token()?;
        api.tls_config()?;
        Ok(api)
    }

    /// The bearer token, read now (it rotates).
    fn token(&self) -> std::result::Result<String, String> {
        let text = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("service-account token {}: {e}", self.token_file.display()))?;
        let token = text.trim();
        // A token is one header value: no whitespace or control characters inside.
        if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "service-account token {}: empty or not a token",
                self.token_file.display()
            ));
        }
        Ok(token.to_string())
    }

    /// TLS settings trusting only the CA file's certificates.
    fn tls_config(&self) -> std::result::Result<rustls::ClientConfig, String> {
        let shown = self.ca_file.display();
        let pem = std::fs::read(&self.ca_file).map_err(|e| format!("CA {shown}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|_| format!("CA {shown}: malformed PEM certificate"))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA {shown}: unusable certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("CA {shown}: no PEM certificate in the file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// `host:port` as the Host header wants it (IPv6 in brackets).
    fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// One key of a ConfigMap as the live policy.
#[derive(Clone, Debug)]
pub struct ConfigMapWriter {
    api: ApiServer,
    namespace: String,
    name: String,
    key: String,
}

impl ConfigMapWriter {
    /// The writer of `key` in ConfigMap `namespace/name`, through `api`.
    pub fn new(
        api: ApiServer,
        namespace: impl Into<String>,
        name: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            api,
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        }
    }

    /// The writer of `key` in `configmap` from inside a pod: the API server and
    /// credentials from the environment and [`SERVICE_ACCOUNT_DIR`], the namespace (when
    /// the reference has none) from its `namespace` file. The error says what is missing.
    pub fn in_cluster(configmap: &ConfigMapRef, key: &str) -> std::result::Result<Self, String> {
        Self::in_cluster_from(
            configmap,
            key,
            std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    /// [`ConfigMapWriter::in_cluster`] with the environment's values and the directory given.
    pub fn in_cluster_from(
        configmap: &ConfigMapRef,
        key: &str,
        host: Option<&str>,
        port: Option<&str>,
        account_dir: &Path,
    ) -> std::result::Result<Self, String> {
        check_key(key)?;
        let api = ApiServer::in_cluster(host, port, account_dir)?;
        let namespace = match &configmap.namespace {
            Some(ns) => ns.clone(),
            None => {
                let file = account_dir.join("namespace");
                let ns = std::fs::read_to_string(&file)
                    .map_err(|e| {
                        format!("no namespace given and {} unreadable: {e}", file.display())
                    })?
                    .trim()
                    .to_string();
                check_name(&ns, 63, "namespace")?;
                ns
            }
        };
        Ok(Self::new(api, namespace, configmap.name.clone(), key))
    }

    /// `namespace/name`, for messages.
    fn shown(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            self.namespace, self.name
        )
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::ConfigMap {
            configmap: self.shown(),
            reason: reason.into(),
        }
    }

    /// GETs the ConfigMap: the whole object, for a read-modify-write.
    async fn get(&self) -> Result<Value> {
        let (status, body) = self.call(Method::GET, None).await?;
        if status != StatusCode::OK {
            return Err(self.refused("GET", status, &body));
        }
        let object: Value = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("GET answered with unreadable JSON: {e}")))?;
        if !object.is_object() {
            return Err(self.err("GET answered with something other than an object"));
        }
        Ok(object)
    }

    /// The key's text in a ConfigMap object.
    fn text_of<'a>(&self, object: &'a Value) -> Result<&'a str> {
        match object.get("data").and_then(|d| d.get(&self.key)) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.err(format!("data.{} is not a string", self.key))),
            None => Err(self.err(format!("has no key {:?} in data", self.key))),
        }
    }

    /// One HTTPS call to the ConfigMap's path; returns the status and the body.
    async fn call(&self, method: Method, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes)> {
        let what = method.to_string();
        // Read per call: the kubelet rotates the token (and, rarely, the CA).
        let token = self.api.token().map_err(|e| self.err(e))?;
        let tls = self.api.tls_config().map_err(|e| self.err(e))?;
        let exchange = async {
            let server_name = ServerName::try_from(self.api.host.clone())
                .map_err(|_| format!("{:?} is not a host name", self.api.host))?;
            let tcp = tokio::net::TcpStream::connect((self.api.host.as_str(), self.api.port))
                .await
                .map_err(|e| format!("connect {}: {e}", self.api.authority()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", self.api.authority()))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP with {}: {e}", self.api.authority()))?;
            // Drives the connection until the exchange is over (dropped with `sender`).
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut request = Request::builder()
                .method(method)
                .uri(self.path())
                .header(header::HOST, self.api.authority())
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::ACCEPT, "application/json")
                .header(header::USER_AGENT, "taskrouter-rollout-controller");
            if body.is_some() {
                request = request.header(header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| format!("request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{what}: reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(self.err(reason)),
            Err(_) => Err(self.err(format!(
                "no answer from the API server within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The error for a refused call, with the server's own message when it sent one.
    fn refused(&self, what: &str, status: StatusCode, body: &[u8]) -> Error {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(one_line))
            .unwrap_or_default();
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (the service-account token was not accepted)",
            StatusCode::FORBIDDEN => {
                " (the service account's Role must allow get and update on this ConfigMap)"
            }
            StatusCode::NOT_FOUND => " (no such ConfigMap)",
            _ => "",
        };
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        self.err(format!("{what} answered {status}{hint}{detail}"))
    }
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

impl PolicyWriter for ConfigMapWriter {
    async fn read(&self) -> Result<String> {
        let object = self.get().await?;
        self.text_of(&object).map(str::to_string)
    }

    async fn write(&self, text: &str) -> Result<()> {
        // Belt and braces: whatever the caller did, an invalid text is never sent.
        validate(text)?;
        let mut object = self.get().await?;
        let version = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| self.err("GET answered without metadata.resourceVersion"))?;
        if let Some(map) = object.as_object_mut() {
            let data = map
                .entry("data")
                .or_insert_with(|| Value::Object(Default::default()));
            if !data.is_object() {
                *data = Value::Object(Default::default());
            }
            if let Some(data) = data.as_object_mut() {
                data.insert(self.key.clone(), Value::String(text.to_string()));
            }
            // The server keeps its field ownership records when an update leaves them out.
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
                // Already there from the GET; set again so the PUT is always conditional.
                meta.insert("resourceVersion".into(), Value::String(version));
            }
        }
        let body = serde_json::to_vec(&object)
            .map_err(|e| self.err(format!("encoding the ConfigMap: {e}")))?;
        let (status, answer) = self.call(Method::PUT, Some(body)).await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => Ok(()),
            StatusCode::CONFLICT => Err(Error::Conflict {
                configmap: self.shown(),
            }),
            status => Err(self.refused("PUT", status, &answer)),
        }
    }

    fn describe(&self) -> String {
        format!("ConfigMap {} key {}", self.shown(), self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_references_are_kubernetes_names() {
        let r: ConfigMapRef = "taskrouter/router-policy".parse().unwrap();
        assert_eq!(r.namespace.as_deref(), Some("taskrouter"));
        assert_eq!(r.name, "router-policy");
        let r: ConfigMapRef = "router-policy".parse().unwrap();
        assert_eq!(r.namespace, None);
        for bad in ["", "/x", "ns/", "Ns/x", "ns/x/y", "ns/../x", "ns/x?y", "-x"] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad:?} accepted");
        }
        assert!(check_key("policy.toml").is_ok());
        assert!(check_key("a/b").is_err());
        assert!(check_key("").is_err());
    }

    #[test]
    fn in_cluster_settings_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = ApiServer::in_cluster(None, Some("443"), dir.path()).unwrap_err();
        assert!(e.contains("KUBERNETES_SERVICE_HOST"), "{e}");
        let e = ApiServer::in_cluster(Some("10.0.0.1"), Some("x"), dir.path()).unwrap_err();
        assert!(e.contains("KUBERNETES_SERVICE_PORT"), "{e}");
        let e = ApiServer::in_cluster(Some("10.0.0.1"), Some("443"), dir.path()).unwrap_err();
        assert!(e.contains("token"), "{e}");
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        let e = ApiServer::in_cluster(Some("10.0.0.1"), Some("443"), dir.path()).unwrap_err();
        assert!(e.contains("ca.crt"), "{e}");
        std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
        let e = ApiServer::in_cluster(Some("10.0.0.1"), Some("443"), dir.path()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let api = ApiServer::new("fd00::1", 443, "/t", "/c");
        assert_eq!(api.authority(), "[fd00::1]:443");
        let api = ApiServer::new("10.96.0.1", 443, "/t", "/c");
        assert_eq!(api.authority(), "10.96.0.1:443");
    }
}
