//! The remote agent against a real tonic `Agent` server on an ephemeral port.

use executor_service::Error;
use executor_service::agent::{
    Agent, AgentArgs, AgentKind, IterationInput, RemoteAgent, RetryPolicy, build_agent,
    run_with_retry,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::agent_server::{Agent as AgentService, AgentServer};
use taskrouter_proto::v1::{
    AgentStep, Complexity, RunIterationRequest, RunIterationResponse, Task,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

const DESCRIPTION: &str = "Move PHI for patient John Q. Public to the new store";

/// Behaves according to the request's role.
#[derive(Default)]
struct TestAgent {
    flaky_calls: AtomicU32,
}

#[tonic::async_trait]
impl AgentService for TestAgent {
    async fn run_iteration(
        &self,
        request: Request<RunIterationRequest>,
    ) -> Result<Response<RunIterationResponse>, Status> {
        let has_deadline = request.metadata().get("grpc-timeout").is_some();
        let req = request.into_inner();
        let task = req
            .task
            .ok_or_else(|| Status::invalid_argument("task is required"))?;
        match req.role.as_str() {
            "slow" => tokio::time::sleep(Duration::from_secs(30)).await,
            "deadline" => return Err(Status::deadline_exceeded("model call took too long")),
            "echo" => {
                return Err(Status::internal(format!(
                    "cannot work on: {}",
                    task.description
                )));
            }
            "negative" => {
                return Ok(Response::new(RunIterationResponse {
                    output: "x".into(),
                    done: true,
                    cost_usd: -1.0,
                    ..Default::default()
                }));
            }
            "flaky" if self.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 => {
                return Err(Status::unavailable("warming up"));
            }
            _ => {}
        }
        let step = AgentStep::try_from(req.step).map_err(|_| Status::invalid_argument("step"))?;
        Ok(Response::new(RunIterationResponse {
            output: format!(
                "{} {} {} {} {:?} desc={} prior={} ctx={} deadline={}",
                task.id,
                task.complexity().as_str_name(),
                req.role,
                req.iteration,
                step,
                task.description.len(),
                req.prior_outputs.len(),
                req.context.join("|"),
                has_deadline
            ),
            done: req.iteration >= 2,
            cost_usd: 0.5,
            tokens_in: 10,
            tokens_out: 20,
            plan_roles: if step == AgentStep::Analysis {
                req.context
            } else {
                Vec::new()
            },
        }))
    }
}

async fn start_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(TestAgent::default()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn input(step: AgentStep, role: &str, iteration: u32) -> IterationInput {
    IterationInput {
        task: Arc::new(Task {
            id: "task-remote-1".into(),
            description: DESCRIPTION.into(),
            complexity: Complexity::Critical as i32,
            estimated_value_usd: 99.0,
            repositories: vec!["org/a".into()],
            labels: Default::default(),
        }),
        role: role.into(),
        iteration,
        step,
        prior_outputs: vec!["a".into(), "b".into()],
        context: vec!["implementer".into(), "reviewer".into()],
        workspace: None,
    }
}

fn remote(addr: SocketAddr, timeout: Duration) -> RemoteAgent {
    RemoteAgent::new(&format!("http://{addr}"), timeout).unwrap()
}

#[tokio::test]
async fn runs_iterations_over_grpc() {
    let addr = start_server().await;
    let agent = remote(addr, Duration::from_secs(10));
    assert_eq!(agent.kind(), "remote");

    let out = agent
        .run_iteration(input(AgentStep::Iteration, "agent", 1))
        .await
        .unwrap();
    assert_eq!(
        out.output,
        format!(
            "task-remote-1 COMPLEXITY_CRITICAL agent 1 Iteration desc={} prior=2 ctx=implementer|reviewer deadline=true",
            DESCRIPTION.len()
        )
    );
    assert!(!out.done);
    assert_eq!((out.cost_usd, out.tokens_in, out.tokens_out), (0.5, 10, 20));

    let plan = agent
        .run_iteration(input(AgentStep::Analysis, "lead", 2))
        .await
        .unwrap();
    assert!(plan.done);
    assert_eq!(plan.plan_roles, ["implementer", "reviewer"]);
}

#[tokio::test]
async fn built_from_flags() {
    let addr = start_server().await;
    let args = AgentArgs {
        agent: AgentKind::Remote,
        agent_endpoint: Some(format!("http://{addr}")),
        agent_timeout: Duration::from_secs(10),
        ..AgentArgs::simulator()
    };
    let agent = build_agent(&args).unwrap();
    assert_eq!(agent.kind(), "remote");
    let out = agent
        .run_iteration(input(AgentStep::Specialist, "reviewer", 2))
        .await
        .unwrap();
    assert!(out.done);
    assert!(
        out.output.contains("reviewer 2 Specialist"),
        "{}",
        out.output
    );
}

#[tokio::test]
async fn slow_server_hits_the_deadline() {
    let addr = start_server().await;
    let timeout = Duration::from_millis(300);
    let agent = remote(addr, timeout);
    let started = Instant::now();
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "slow", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentTimeout(d) if d == timeout),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn deadline_exceeded_status_is_a_timeout() {
    let addr = start_server().await;
    let agent = remote(addr, Duration::from_secs(10));
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "deadline", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AgentTimeout(_)), "{err:?}");
}

#[tokio::test]
async fn errors_carry_the_code_but_never_the_description() {
    let addr = start_server().await;
    let agent = remote(addr, Duration::from_secs(10));
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "echo", 1))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::AgentFailed(_)), "{err:?}");
    assert!(msg.contains("Internal"), "{msg}");
    assert!(msg.contains("cannot work on: [description]"), "{msg}");
    assert!(!msg.contains("John"), "{msg}");

    let err = agent
        .run_iteration(input(AgentStep::Iteration, "negative", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentFailed(ref m) if m.contains("cost_usd")),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_agent_failed() {
    // Bind and drop to get a port nobody listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = remote(addr, Duration::from_secs(5));
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "agent", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentFailed(ref m) if m.contains("Unavailable")),
        "{err:?}"
    );
}

#[tokio::test]
async fn retries_a_transient_rpc_failure() {
    let addr = start_server().await;
    let agent = remote(addr, Duration::from_secs(10));
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let outcome = run_with_retry(&agent, input(AgentStep::Iteration, "flaky", 2), &policy).await;
    assert!(outcome.result.as_ref().unwrap().done);
    assert_eq!(outcome.attempts(), 2);
    assert_eq!(
        outcome.failures,
        ["agent failed: remote agent returned Unavailable: warming up"]
    );
}
