//! Security of the executor binary as a real child process: TLS and a token on its own
//! port, mutual TLS and a token towards a real router binary, Redis with a password and
//! over `rediss://`, and no secret in any output.

use service_kit::auth::{BearerToken, ClientInterceptor};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, ReasonCode, RunRequest, Task, TaskStatus};
use test_support::client::tls_endpoint;
use test_support::{
    RedisOptions, RedisServer, ServiceProcess, TestPki, free_port, wait_for_grpc_serving_at,
    wait_for_tcp,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_executor-service");
const EXECUTOR_TOKEN: &str = "executor-token-0123456789abcdef";
const ROUTER_TOKEN: &str = "router-token-fedcba9876543210";
const AGENT_TOKEN: &str = "agent-token-00112233445566778899";
const REDIS_PASSWORD: &str = "s3cret-redis-pw";
const SERVICE: &str = "taskrouter.v1.Executor";

/// Security variables the executor reads, removed for the commands run here so the
/// caller's shell cannot change what a test sees.
const EXECUTOR_VARS: [&str; 16] = [
    "REDIS_URL",
    "REDIS_TLS_CA",
    "REDIS_TLS_CERT",
    "REDIS_TLS_KEY",
    "ROUTER_ADDR",
    "EXECUTOR_LISTEN",
    "EXECUTOR_ROUTER_TLS_CA",
    "EXECUTOR_ROUTER_TLS_CERT",
    "EXECUTOR_ROUTER_TLS_KEY",
    "EXECUTOR_ROUTER_AUTH_TOKEN",
    "EXECUTOR_ROUTER_AUTH_TOKEN_FILE",
    "EXECUTOR_AGENT_AUTH_TOKEN",
    "TASKROUTER_TLS_CERT",
    "TASKROUTER_TLS_KEY",
    "TASKROUTER_AUTH_TOKEN",
    "TASKROUTER_AUTH_TOKEN_FILE",
];

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn spawn_executor(args: &[&str], envs: &[(&str, &str)]) -> ServiceProcess {
    let mut all = envs.to_vec();
    all.push(("RUST_LOG", "debug"));
    ServiceProcess::spawn_program(Path::new(BIN), args, &all)
}

fn executor_command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in EXECUTOR_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn task(id: &str) -> Task {
    test_support::client::task(
        id,
        "fix a typo in the README heading",
        Complexity::Low,
        10.0,
        &["org/app"],
        &[("sim.iterations", "2")],
    )
}

type Client = ExecutorClient<InterceptedService<Channel, ClientInterceptor>>;

fn client(channel: Channel, token: Option<&str>) -> Client {
    let token = token.map(|t| BearerToken::new(t).unwrap());
    ExecutorClient::with_interceptor(channel, ClientInterceptor::new(token.as_ref()))
}

async fn health(endpoint: Endpoint) -> Option<i32> {
    let channel = endpoint.connect().await.ok()?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .ok()?;
    Some(resp.into_inner().status)
}

/// Polls the child's log until it contains `needle`.
async fn wait_for_log(child: &ServiceProcess, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.log_contents().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn stop(child: &mut ServiceProcess) -> String {
    child.sigterm();
    assert!(
        child.wait_exit(Duration::from_secs(30)).await.is_some(),
        "did not exit on SIGTERM: {}",
        child.log_contents()
    );
    child.log_contents()
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in [EXECUTOR_TOKEN, ROUTER_TOKEN, AGENT_TOKEN, REDIS_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

#[tokio::test]
async fn executor_routes_over_mutual_tls_with_tokens_and_a_password_protected_redis() {
    let pki = TestPki::generate();
    let redis = RedisServer::start_with(RedisOptions {
        appendonly: false,
        password: Some(REDIS_PASSWORD.into()),
    });
    let router_token = pki.dir().join("router-token");
    std::fs::write(&router_token, format!("{ROUTER_TOKEN}\n")).unwrap();

    // The router: mutual TLS plus a token.
    let router_port = free_port();
    let router_listen = format!("127.0.0.1:{router_port}");
    let mut router = ServiceProcess::spawn(
        "router-service",
        &["--listen", &router_listen],
        &[
            ("TASKROUTER_TLS_CERT", path(&pki.server_cert)),
            ("TASKROUTER_TLS_KEY", path(&pki.server_key)),
            ("TASKROUTER_TLS_CLIENT_CA", path(&pki.ca)),
            ("TASKROUTER_AUTH_TOKEN_FILE", path(&router_token)),
        ],
    );

    // The executor: TLS and a token (from the environment) on its own port; client
    // certificate, CA and token towards the router.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let router_addr = format!("https://127.0.0.1:{router_port}");
    let redis_url = redis.url();
    let mut executor = spawn_executor(
        &[
            "--listen",
            &listen,
            "--router-addr",
            &router_addr,
            "--router-tls-ca",
            path(&pki.ca),
            "--router-tls-cert",
            path(&pki.client_cert),
            "--router-tls-key",
            path(&pki.client_key),
            "--router-auth-token-file",
            path(&router_token),
            "--key-prefix",
            "tlstest",
            "--concurrency",
            "1",
        ],
        &[
            ("REDIS_URL", &redis_url),
            ("TASKROUTER_TLS_CERT", path(&pki.server_cert)),
            ("TASKROUTER_TLS_KEY", path(&pki.server_key)),
            ("TASKROUTER_AUTH_TOKEN", EXECUTOR_TOKEN),
        ],
    );

    let router_ready = Endpoint::from_shared(router_addr.clone())
        .unwrap()
        .tls_config(pki.client_config_with_identity())
        .unwrap();
    assert!(
        wait_for_grpc_serving_at(
            router_ready,
            "taskrouter.v1.Router",
            Duration::from_secs(30)
        )
        .await,
        "router never became SERVING: {}",
        router.log_contents()
    );
    let endpoint = tls_endpoint(port, pki.client_config());
    assert!(
        wait_for_grpc_serving_at(endpoint.clone(), SERVICE, Duration::from_secs(30)).await,
        "executor never became SERVING (health needs no token): {}",
        executor.log_contents()
    );
    let channel = endpoint.connect().await.unwrap();

    // No token, a wrong token: refused before any handler runs.
    for token in [None, Some("not-the-executor-token-0000")] {
        let err = client(channel.clone(), token)
            .run(RunRequest {
                task: Some(task("tls-refused")),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }

    // The right token: the task runs, routed by the router over mutual TLS.
    let result = client(channel.clone(), Some(EXECUTOR_TOKEN))
        .run(RunRequest {
            task: Some(task("tls-routed")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(result.status(), TaskStatus::Completed, "{result:?}");
    let analysis = result.state.unwrap().analysis.unwrap();
    assert!(
        !analysis.policy_version.is_empty(),
        "the router did not decide: {analysis:?}\n{}",
        executor.log_contents()
    );
    assert!(
        !analysis
            .reasons
            .iter()
            .any(|r| r.code == ReasonCode::RouterUnavailable as i32),
        "{analysis:?}"
    );

    // A plaintext client gets nothing from the TLS port.
    let plain = Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let plain_served = match plain.connect().await {
        Err(_) => false,
        Ok(channel) => client(channel, Some(EXECUTOR_TOKEN))
            .run(RunRequest {
                task: Some(task("tls-plain")),
                ..Default::default()
            })
            .await
            .is_ok(),
    };
    assert!(!plain_served, "a plaintext client was served");

    let log = stop(&mut executor).await;
    assert!(log.contains("transport=tls auth=token"), "{log}");
    assert_no_secrets("the executor log", &log);
    assert_no_secrets("the router log", &stop(&mut router).await);
}

#[tokio::test]
async fn secrets_never_reach_help_check_config_or_logs() {
    let dead = free_port();
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{dead}/");
    let envs = [
        ("REDIS_URL", redis_url.as_str()),
        ("TASKROUTER_AUTH_TOKEN", EXECUTOR_TOKEN),
        ("EXECUTOR_ROUTER_AUTH_TOKEN", ROUTER_TOKEN),
        ("EXECUTOR_AGENT_AUTH_TOKEN", AGENT_TOKEN),
    ];

    let out = executor_command()
        .arg("--help")
        .envs(envs)
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--redis-tls-ca") && help.contains("--router-auth-token-file"));
    assert_no_secrets("--help", &help);

    let out = executor_command()
        .args([
            "--check-config",
            "--router-addr",
            "http://user:s3cret-redis-pw@router:1",
        ])
        .envs(envs)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("config ok"), "{text}");
    assert_no_secrets("--check-config", &text);

    // Config errors never echo the URL.
    let out = executor_command()
        .args(["--check-config", "--redis-tls-cert", "/no/cert.pem"])
        .envs(envs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_no_secrets("a config error", &stderr);

    // Running against a Redis that is not there, with a wrong-token call on top.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_executor(&["--listen", &listen, "--router-addr", ""], &envs);
    assert!(
        wait_for_log(&child, "store unreachable", Duration::from_secs(20)).await,
        "{}",
        child.log_contents()
    );
    let endpoint = Endpoint::from_shared(format!("http://{listen}")).unwrap();
    if let Ok(channel) = endpoint.connect().await {
        let err = client(channel, Some("wrong-token-abcdefabcdefabcdef"))
            .run(RunRequest {
                task: Some(task("nope")),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let log = stop(&mut child).await;
    assert!(
        log.contains("127.0.0.1"),
        "the log should name the address: {log}"
    );
    assert_no_secrets("the executor log", &log);
}

#[tokio::test]
async fn rediss_against_a_plain_redis_is_a_clear_one_line_error() {
    let redis = RedisServer::start_with(RedisOptions {
        appendonly: false,
        password: Some(REDIS_PASSWORD.into()),
    });
    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port());

    let out = executor_command()
        .args(["--check-config", "--redis-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "rediss:// must parse: {out:?}");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_executor(
        &["--listen", &listen, "--router-addr", ""],
        &[("REDIS_URL", &url)],
    );
    assert!(
        wait_for_log(&child, "store unreachable", Duration::from_secs(20)).await,
        "{}",
        child.log_contents()
    );
    let endpoint = Endpoint::from_shared(format!("http://{listen}")).unwrap();
    assert_eq!(
        health(endpoint).await,
        Some(ServingStatus::NotServing as i32),
        "{}",
        child.log_contents()
    );
    let log = stop(&mut child).await;
    let line = log
        .lines()
        .find(|l| l.contains("store unreachable"))
        .unwrap()
        .to_string();
    assert!(line.contains("error="), "{line}");
    assert!(line.contains("speaks TLS (rediss://)"), "{line}");
    assert_no_secrets("the executor log", &log);
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_client_certificate_works() {
    let pki = TestPki::generate();
    let redis_port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = ServiceProcess::spawn_program(
        Path::new("redis-server"),
        &[
            "--port",
            "0",
            "--tls-port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            path(&pki.server_cert),
            "--tls-key-file",
            path(&pki.server_key),
            "--tls-ca-cert-file",
            path(&pki.ca),
            "--tls-auth-clients",
            "yes",
            "--requirepass",
            REDIS_PASSWORD,
            "--dir",
            path(redis_dir.path()),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        &[],
    );
    assert!(
        wait_for_tcp(
            format!("127.0.0.1:{redis_port}").parse().unwrap(),
            Duration::from_secs(10)
        )
        .await,
        "redis-server with TLS did not start: {}",
        redis.log_contents()
    );

    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_executor(
        &[
            "--listen",
            &listen,
            "--router-addr",
            "",
            "--redis-tls-ca",
            path(&pki.ca),
            "--redis-tls-cert",
            path(&pki.client_cert),
            "--redis-tls-key",
            path(&pki.client_key),
        ],
        &[("REDIS_URL", &url)],
    );
    let endpoint = Endpoint::from_shared(format!("http://{listen}")).unwrap();
    assert!(
        wait_for_grpc_serving_at(endpoint.clone(), SERVICE, Duration::from_secs(30)).await,
        "executor never reached Redis over TLS: {}",
        child.log_contents()
    );
    let result = client(endpoint.connect().await.unwrap(), None)
        .run(RunRequest {
            task: Some(task("over-rediss")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(result.status(), TaskStatus::Completed, "{result:?}");
    assert_eq!(result.total_iterations, 2);
    let log = stop(&mut child).await;
    assert_no_secrets("the executor log", &log);
    redis.sigterm();
    let _ = redis.wait_exit(Duration::from_secs(10)).await;
}

/// An agent that answers every iteration with "ok".
struct OkAgent;

#[tonic::async_trait]
impl taskrouter_proto::v1::agent_server::Agent for OkAgent {
    async fn run_iteration(
        &self,
        _request: tonic::Request<taskrouter_proto::v1::RunIterationRequest>,
    ) -> Result<tonic::Response<taskrouter_proto::v1::RunIterationResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            taskrouter_proto::v1::RunIterationResponse {
                output: "ok".into(),
                done: true,
                ..Default::default()
            },
        ))
    }
}

/// A remote agent behind the services' own server builder: mutual TLS and a token.
async fn start_secured_agent(pki: &TestPki) -> (u16, service_kit::Shutdown) {
    use service_kit::server::ServerArgs;
    let args = ServerArgs {
        tls: service_kit::tls::ServerTlsArgs {
            tls_cert: Some(pki.server_cert.clone()),
            tls_key: Some(pki.server_key.clone()),
            tls_client_ca: Some(pki.ca.clone()),
        },
        auth: service_kit::auth::ServerAuthArgs {
            auth_token_file: None,
            auth_token: Some(service_kit::security::Secret::new(AGENT_TOKEN)),
            auth_tokens_file: None,
        },
        ..ServerArgs::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = service_kit::server::ServiceServer::new(&args, args.load_security().unwrap())
        .service(taskrouter_proto::v1::agent_server::AgentServer::new(
            OkAgent,
        ))
        .start()
        .await
        .unwrap();
    let shutdown = service_kit::Shutdown::new();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    (port, shutdown)
}

fn agent_input() -> executor_service::agent::IterationInput {
    executor_service::agent::IterationInput {
        task: std::sync::Arc::new(task("remote-tls")),
        role: "agent".into(),
        iteration: 1,
        step: taskrouter_proto::v1::AgentStep::Iteration,
        prior_outputs: Vec::new(),
        context: Vec::new(),
        workspace: None,
    }
}

#[tokio::test]
async fn the_remote_agent_is_called_over_mutual_tls_with_its_token() {
    use executor_service::agent::{AgentArgs, AgentClientArgs, AgentKind, build_agent};
    let pki = TestPki::generate();
    let (port, shutdown) = start_secured_agent(&pki).await;
    let token_file = pki.dir().join("agent-token");
    std::fs::write(&token_file, AGENT_TOKEN).unwrap();
    let wrong_file = pki.dir().join("wrong-token");
    std::fs::write(&wrong_file, "wrong-agent-token-0123456789").unwrap();
    let client_args = |token: &Path, identity: bool| AgentClientArgs {
        agent_tls_ca: Some(pki.ca.clone()),
        agent_tls_cert: identity.then(|| pki.client_cert.clone()),
        agent_tls_key: identity.then(|| pki.client_key.clone()),
        agent_tls_domain: Some("localhost".into()),
        agent_auth_token_file: Some(token.to_path_buf()),
        agent_auth_token: None,
    };
    let agent = |client: AgentClientArgs| {
        build_agent(&AgentArgs {
            agent: AgentKind::Remote,
            agent_endpoint: Some(format!("https://127.0.0.1:{port}")),
            agent_timeout: Duration::from_secs(10),
            client,
            ..AgentArgs::simulator()
        })
        .unwrap()
    };

    let out = agent(client_args(&token_file, true))
        .run_iteration(agent_input())
        .await
        .unwrap();
    assert_eq!(out.output, "ok");

    let err = agent(client_args(&wrong_file, true))
        .run_iteration(agent_input())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    assert!(!err.to_string().contains("wrong-agent-token"), "{err}");

    let err = agent(client_args(&token_file, false))
        .run_iteration(agent_input())
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(AGENT_TOKEN), "{err}");

    // http:// with TLS settings is a configuration error, not a silent plaintext call.
    let err = build_agent(&AgentArgs {
        agent: AgentKind::Remote,
        agent_endpoint: Some(format!("http://127.0.0.1:{port}")),
        client: client_args(&token_file, true),
        ..AgentArgs::simulator()
    })
    .err()
    .unwrap();
    assert!(
        err.starts_with("--agent-endpoint") && err.contains("use https://"),
        "{err}"
    );
    shutdown.trigger();
}

/// A command agent runs as the executor's user: it must not be able to read the
/// executor's environment (Redis password, tokens) from /proc. Needs root (to switch to
/// an unprivileged user for both sides) and `setpriv`; skipped otherwise.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn same_user_processes_cannot_read_the_executors_environment() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    // The unprivileged user must be able to execute the binary.
    let copy =
        std::env::temp_dir().join(format!("executor-service-dumpable-{}", std::process::id()));
    std::fs::copy(BIN, &copy).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/", free_port());
    let mut args: Vec<&str> = NOBODY.to_vec();
    args.extend([path(&copy), "--listen", &listen, "--router-addr", ""]);
    let mut child = ServiceProcess::spawn_program(
        Path::new("setpriv"),
        &args,
        &[
            ("REDIS_URL", &redis_url),
            ("TASKROUTER_AUTH_TOKEN", EXECUTOR_TOKEN),
        ],
    );
    let started = wait_for_log(&child, "executor listening", Duration::from_secs(20)).await;
    let environ = format!("/proc/{}/environ", child.pid());
    let peek = Command::new("setpriv")
        .args(NOBODY)
        .args(["cat", &environ])
        .output()
        .unwrap();
    let log = stop(&mut child).await;
    let _ = std::fs::remove_file(&copy);
    assert!(started, "{log}");
    assert!(!peek.status.success(), "the environment was readable");
    assert_no_secrets(
        "/proc/<pid>/environ",
        &String::from_utf8_lossy(&peek.stdout),
    );
}
