//! Who may approve: the executor binary as a real child process with a tokens file and
//! mutual TLS, a real router binary with an approval policy, a real redis-server.

use service_kit::auth::{BearerToken, ClientInterceptor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{
    ApprovalGate, Complexity, DecisionRequest, GetRequest, SessionState, SubmitRequest, Task,
    TaskStatus,
};
use test_support::{RedisServer, ServiceProcess, TestPki, free_port, wait_for_grpc_serving_at};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_executor-service");
const APPROVER_TOKEN: &str = "approver-token-0123456789abcdef";
const CI_TOKEN: &str = "ci-token-fedcba98765432100000";
const POLICY: &str = r#"
[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"
"#;

type Client = ExecutorClient<InterceptedService<Channel, ClientInterceptor>>;

fn client(channel: Channel, token: Option<&str>) -> Client {
    let token = token.map(|t| BearerToken::new(t).unwrap());
    ExecutorClient::with_interceptor(channel, ClientInterceptor::new(token.as_ref()))
}

fn task(id: &str) -> Task {
    Task {
        id: id.into(),
        description: "deploy the api to production".into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 1.0,
        repositories: vec!["org/app".into()],
        labels: HashMap::from([("sim.iterations".to_string(), "2".to_string())]),
    }
}

async fn state(c: &mut Client, id: &str) -> SessionState {
    c.get(GetRequest {
        task_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .state
    .unwrap()
}

async fn wait_status(c: &mut Client, id: &str, want: TaskStatus) -> SessionState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = state(c, id).await;
        if s.status == want as i32 {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn approve(id: &str) -> DecisionRequest {
    DecisionRequest {
        task_id: id.into(),
        gate: ApprovalGate::BeforeStart as i32,
        comment: "looks right".into(),
    }
}

#[tokio::test]
async fn only_callers_with_the_approver_role_decide_and_each_is_recorded_by_name() {
    let pki = TestPki::generate();
    let redis = RedisServer::start();
    let dir = pki.dir();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# name token roles\nalice {APPROVER_TOKEN} approver\nci {CI_TOKEN}\ntaskrouter-test-client - approver\n"
        ),
    )
    .unwrap();
    let router_port = free_port();
    let mut router = ServiceProcess::spawn(
        "router-service",
        &[
            "--listen",
            &format!("127.0.0.1:{router_port}"),
            "--policy",
            p(&policy),
        ],
        &[],
    );
    let port = free_port();
    let mut executor = ServiceProcess::spawn_program(
        Path::new(BIN),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--router-addr",
            &format!("http://127.0.0.1:{router_port}"),
            "--key-prefix",
            "roles",
            "--auth-tokens-file",
            p(&tokens),
            "--tls-cert",
            p(&pki.server_cert),
            "--tls-key",
            p(&pki.server_key),
            "--tls-client-ca",
            p(&pki.ca),
        ],
        &[("REDIS_URL", &redis.url()), ("RUST_LOG", "debug")],
    );
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(pki.client_config_with_identity())
        .unwrap();
    assert!(
        wait_for_grpc_serving_at(
            endpoint.clone(),
            "taskrouter.v1.Executor",
            Duration::from_secs(30)
        )
        .await,
        "executor never became SERVING: {}",
        executor.log_contents()
    );
    let channel = endpoint.connect().await.unwrap();
    let mut ci = client(channel.clone(), Some(CI_TOKEN));
    let mut alice = client(channel.clone(), Some(APPROVER_TOKEN));
    let mut by_cert = client(channel.clone(), None);
    for id in ["ROLE-1", "ROLE-2"] {
        ci.submit(SubmitRequest {
            task: Some(task(id)),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
        wait_status(&mut ci, id, TaskStatus::WaitingApproval).await;
    }
    // A token without the role is refused, and nothing is recorded.
    let refused = ci.approve(approve("ROLE-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("ci lacks the approver role"));
    let refused = ci.reject(approve("ROLE-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(state(&mut ci, "ROLE-1").await.approvals.is_empty());

    // A named token with the role, and a client certificate given the role.
    alice.approve(approve("ROLE-1")).await.unwrap();
    by_cert.approve(approve("ROLE-2")).await.unwrap();
    let one = wait_status(&mut ci, "ROLE-1", TaskStatus::Completed).await;
    let two = wait_status(&mut ci, "ROLE-2", TaskStatus::Completed).await;
    assert_eq!(one.approvals[0].decided_by, "alice");
    assert_eq!(two.approvals[0].decided_by, "taskrouter-test-client");

    executor.sigterm();
    executor.wait_exit(Duration::from_secs(30)).await;
    router.sigterm();
    router.wait_exit(Duration::from_secs(30)).await;
    let log = executor.log_contents();
    for secret in [APPROVER_TOKEN, CI_TOKEN, "looks right", "deploy the api"] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
