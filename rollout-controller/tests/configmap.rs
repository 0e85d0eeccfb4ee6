//! The Kubernetes ConfigMap writer against a stand-in API server: a real HTTPS server on
//! 127.0.0.1 (certificate from a test CA) that serves one ConfigMap's GET and PUT with the
//! API server's optimistic concurrency — a PUT carrying a stale `metadata.resourceVersion`
//! is refused with 409 Conflict, a PUT without one overwrites unconditionally (as the real
//! API server allows for ConfigMaps). Not a real kube-apiserver: RBAC, admission and
//! field management are not exercised here.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rollout_controller::Error;
use rollout_controller::configmap::{ConfigMapRef, ConfigMapWriter};
use rollout_controller::controller::{Controller, ControllerConfig};
use rollout_controller::gates::Gates;
use rollout_controller::outcomes::RedisRecords;
use rollout_controller::state::{Request as Operator, RolloutStore, Status};
use rollout_controller::writer::PolicyWriter;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{RedisServer, TestPki};

const NAMESPACE: &str = "taskrouter";
const NAME: &str = "router-policy";
const LIVE: &str = "[multi_agent]\nrollout_percent = 0\n";
const NEXT: &str = "[multi_agent]\nrollout_percent = 25\n";

/// What the stand-in API server holds and saw.
#[derive(Default)]
struct ApiState {
    /// The ConfigMap, without its resourceVersion (added on the way out).
    object: Value,
    /// Its resourceVersion.
    version: u64,
    /// Bearer tokens accepted.
    tokens: HashSet<String>,
    /// Every request: method, path, Authorization header.
    seen: Vec<(Method, String, String)>,
    /// Applied to `data` right after the next GET is answered: another writer's edit.
    edit_after_next_get: Option<(String, String)>,
    /// Answer PUTs with 403, as RBAC would without the `update` verb.
    forbid_put: bool,
}

struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config_map(data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "taskrouter"},
            "annotations": {"note": "kept"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "data": data,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok(object: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(object.to_string())))
        .unwrap()
}

fn with_version(object: &Value, version: u64) -> Value {
    let mut o = object.clone();
    o["metadata"]["resourceVersion"] = json!(version.to_string());
    o
}

async fn handle(state: Arc<Mutex<ApiState>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut s = state.lock().unwrap();
    s.seen.push((
        parts.method.clone(),
        parts.uri.path().to_string(),
        auth.clone(),
    ));
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if !s.tokens.contains(token) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if parts.uri.path() != format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}") {
        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
    }
    match parts.method {
        Method::GET => {
            let answer = ok(&with_version(&s.object, s.version));
            if let Some((key, text)) = s.edit_after_next_get.take() {
                s.object["data"][key] = json!(text);
                s.version += 1;
            }
            answer
        }
        Method::PUT => {
            if s.forbid_put {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "configmaps \"router-policy\" is forbidden: User \"system:serviceaccount:taskrouter:rollout-controller\" cannot update resource \"configmaps\"",
                );
            }
            let Ok(mut new) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            // The API server's precondition: a given resourceVersion must be current.
            if let Some(v) = new["metadata"]["resourceVersion"].as_str()
                && v != s.version.to_string()
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled on configmaps \"router-policy\": the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            if let Some(meta) = new["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
                // An update without managedFields keeps the stored ones.
                if !meta.contains_key("managedFields") {
                    meta.insert(
                        "managedFields".into(),
                        s.object["metadata"]["managedFields"].clone(),
                    );
                }
            }
            s.object = new;
            s.version += 1;
            ok(&with_version(&s.object, s.version))
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not served here",
        ),
    }
}

impl FakeApi {
    async fn start(pki: &TestPki, object: Value, token: &str) -> Self {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState {
            object,
            version: 100,
            tokens: [token.to_string()].into(),
            ..ApiState::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn data(&self, key: &str) -> Option<String> {
        self.state.lock().unwrap().object["data"][key]
            .as_str()
            .map(str::to_string)
    }

    fn seen(&self) -> Vec<(Method, String, String)> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// A service-account directory as the kubelet lays it out.
struct Account {
    dir: tempfile::TempDir,
}

impl Account {
    fn new(pki: &TestPki, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&pki.ca, dir.path().join("ca.crt")).unwrap();
        std::fs::write(dir.path().join("namespace"), NAMESPACE).unwrap();
        let a = Self { dir };
        a.rotate(token);
        a
    }

    /// Replaces the token the way the kubelet does: a new file, renamed over the old.
    fn rotate(&self, token: &str) {
        let tmp = self.dir.path().join(".token.tmp");
        std::fs::write(&tmp, format!("{token}\n")).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn writer(&self, api: &FakeApi) -> ConfigMapWriter {
        // The reference without a namespace: it comes from the account's namespace file.
        ConfigMapWriter::in_cluster_from(
            &NAME.parse::<ConfigMapRef>().unwrap(),
            "policy.toml",
            Some("127.0.0.1"),
            Some(&api.addr.port().to_string()),
            self.dir.path(),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer_header_and_a_rotated_token_is_picked_up() {
    let pki = TestPki::generate();
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "token-one").await;
    let account = Account::new(&pki, "token-one");
    let writer = account.writer(&api);

    assert_eq!(writer.read().await.unwrap(), LIVE);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Method::GET);
    assert_eq!(
        seen[0].1,
        format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}")
    );
    assert_eq!(seen[0].2, "Bearer token-one");

    // The kubelet rotates the token; the API server stops accepting the old one.
    account.rotate("token-two");
    api.state.lock().unwrap().tokens = ["token-two".to_string()].into();
    writer.write(NEXT).await.unwrap();
    let seen = api.seen();
    assert!(
        seen[1..]
            .iter()
            .all(|(_, _, auth)| auth == "Bearer token-two"),
        "{seen:?}"
    );
    assert_eq!(api.data("policy.toml").as_deref(), Some(NEXT));
}

#[tokio::test]
async fn a_write_replaces_one_key_and_keeps_the_rest_of_the_configmap() {
    let pki = TestPki::generate();
    let api = FakeApi::start(
        &pki,
        config_map(json!({"policy.toml": LIVE, "README": "edit with care"})),
        "t",
    )
    .await;
    let account = Account::new(&pki, "t");
    let writer = account.writer(&api);

    writer.write(NEXT).await.unwrap();

    let s = api.state.lock().unwrap();
    assert_eq!(s.object["data"]["policy.toml"], NEXT);
    assert_eq!(s.object["data"]["README"], "edit with care");
    assert_eq!(
        s.object["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "taskrouter"
    );
    assert_eq!(s.object["metadata"]["annotations"]["note"], "kept");
    assert_eq!(
        s.object["metadata"]["managedFields"][0]["manager"],
        "kubectl"
    );
    assert_eq!(s.version, 101, "exactly one successful PUT");
    let methods: Vec<Method> = s.seen.iter().map(|(m, _, _)| m.clone()).collect();
    assert_eq!(methods, [Method::GET, Method::PUT]);
}

#[tokio::test]
async fn a_concurrent_edit_fails_the_write_with_a_conflict_and_is_not_overwritten() {
    let pki = TestPki::generate();
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "t").await;
    let account = Account::new(&pki, "t");
    let writer = account.writer(&api);
    // Someone applies their own policy between the writer's GET and its PUT.
    let theirs = "# applied by hand\n[multi_agent]\nrollout_percent = 5\n";
    api.state.lock().unwrap().edit_after_next_get =
        Some(("policy.toml".to_string(), theirs.to_string()));

    let e = writer.write(NEXT).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("409 Conflict"), "{text}");
    assert!(text.contains("taskrouter/router-policy"), "{text}");
    assert!(text.contains("nothing was overwritten"), "{text}");
    assert_eq!(api.data("policy.toml").as_deref(), Some(theirs));

    // The controller's next check writes again, now on top of the current version.
    writer.write(NEXT).await.unwrap();
    assert_eq!(api.data("policy.toml").as_deref(), Some(NEXT));
}

#[tokio::test]
async fn a_policy_that_fails_validation_is_never_sent() {
    let pki = TestPki::generate();
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "t").await;
    let account = Account::new(&pki, "t");
    let writer = account.writer(&api);

    let e = writer
        .write("[multi_agent]\nrollout_percent = 300\n")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PolicyRejected(_)), "{e}");
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    assert_eq!(api.data("policy.toml").as_deref(), Some(LIVE));
}

#[tokio::test]
async fn refusals_say_what_to_fix_and_never_show_the_token() {
    let pki = TestPki::generate();
    let secret = "sa-token-that-must-not-leak";
    let api = FakeApi::start(&pki, config_map(json!({"other": "x"})), secret).await;
    let account = Account::new(&pki, secret);
    let writer = account.writer(&api);

    let e = writer.read().await.unwrap_err().to_string();
    assert!(e.contains("has no key \"policy.toml\""), "{e}");

    api.state.lock().unwrap().forbid_put = true;
    let e = writer.write(NEXT).await.unwrap_err().to_string();
    assert!(e.contains("PUT answered 403 Forbidden"), "{e}");
    assert!(e.contains("get and update"), "{e}");
    assert!(e.contains("cannot update resource"), "{e}");
    assert!(!e.contains(secret), "{e}");

    api.state.lock().unwrap().tokens.clear();
    let e = writer.read().await.unwrap_err().to_string();
    assert!(e.contains("401 Unauthorized"), "{e}");
    assert!(!e.contains(secret), "{e}");
    assert!(!format!("{writer:?}").contains(secret));

    std::fs::remove_file(account.path()).unwrap();
    let e = writer.read().await.unwrap_err().to_string();
    assert!(e.contains("service-account token"), "{e}");
}

#[tokio::test]
async fn an_api_server_certificate_from_another_ca_is_refused() {
    let pki = TestPki::generate();
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "t").await;
    let other = TestPki::generate();
    let account = Account::new(&other, "t");
    let writer = account.writer(&api);

    let e = writer.read().await.unwrap_err().to_string();
    assert!(e.contains("TLS with 127.0.0.1"), "{e}");
    assert!(
        api.seen().is_empty(),
        "a request went out over an untrusted connection"
    );
}

#[tokio::test]
async fn the_controller_starts_a_rollout_by_writing_the_configmap() {
    let pki = TestPki::generate();
    let candidate =
        "# candidate\n[multi_agent]\nrollout_percent = 0\n\n[rules]\nvalue_threshold_usd = 100.0\n";
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "t").await;
    let account = Account::new(&pki, "t");
    let writer = account.writer(&api);
    let redis = RedisServer::start();
    let conn = redis.connection_manager().await;
    let store = RolloutStore::new(conn.clone(), "taskrouter");
    let config = ControllerConfig {
        steps: vec![10, 50],
        interval: Duration::from_secs(3600),
        check_every: Duration::from_millis(50),
        window: Duration::from_secs(3600),
        gates: Gates::default(),
        candidate: Some(candidate.to_string()),
    };
    let controller = Controller::new(
        store.clone(),
        RedisRecords::new(conn, "taskrouter"),
        writer,
        config,
    );
    let shutdown = service_kit::Shutdown::new();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { controller.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.data("policy.toml").as_deref() == Some(LIVE) {
        assert!(tokio::time::Instant::now() < deadline, "no write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let state = run.await.unwrap().unwrap().unwrap();
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.percent, 10);
    let text = api.data("policy.toml").unwrap();
    assert!(text.starts_with("# candidate\n"), "{text}");
    assert!(text.contains("rollout_percent = 10"), "{text}");
    let engine = router_service::PolicyEngine::from_toml(&text, "configmap").unwrap();
    assert_eq!(engine.version(), state.policy_version);
    assert_eq!(store.load().await.unwrap().unwrap().percent, 10);
}

#[tokio::test]
async fn an_abort_whose_write_meets_a_conflict_is_applied_at_the_next_check() {
    let pki = TestPki::generate();
    let candidate = "[multi_agent]\nrollout_percent = 0\n";
    let api = FakeApi::start(&pki, config_map(json!({"policy.toml": LIVE})), "t").await;
    let account = Account::new(&pki, "t");
    let redis = RedisServer::start();
    let conn = redis.connection_manager().await;
    let store = RolloutStore::new(conn.clone(), "taskrouter");
    let controller = Controller::new(
        store.clone(),
        RedisRecords::new(conn, "taskrouter"),
        account.writer(&api),
        ControllerConfig {
            steps: vec![10, 50],
            interval: Duration::from_secs(3600),
            check_every: Duration::from_millis(100),
            window: Duration::from_secs(3600),
            gates: Gates::default(),
            candidate: Some(candidate.to_string()),
        },
    );
    let run = tokio::spawn(async move { controller.run(service_kit::Shutdown::new()).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.load().await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no first step");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The abort's write (rollout_percent = 0) meets someone else's edit.
    let theirs = "# applied by hand\n[multi_agent]\nrollout_percent = 10\n";
    api.state.lock().unwrap().edit_after_next_get =
        Some(("policy.toml".to_string(), theirs.to_string()));
    store.request(Operator::Abort).await.unwrap();

    let state = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the abort was lost")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(state.status, Status::Aborted);
    assert_eq!(state.percent, 0);
    let text = api.data("policy.toml").unwrap();
    assert!(text.contains("rollout_percent = 0"), "{text}");
    let puts = api
        .seen()
        .iter()
        .filter(|(m, _, _)| *m == Method::PUT)
        .count();
    // The first step, the refused abort, the abort again.
    assert_eq!(puts, 3);
    assert!(store.pending().await.unwrap().is_none());
}
