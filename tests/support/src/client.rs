//! gRPC client helpers shared by every test suite: connecting to a router or an executor,
//! building tasks, reading a task's state and waiting for it to end.

use std::net::SocketAddr;
use std::time::Duration;

use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    Complexity, GetRequest, GetResponse, RunRequest, RunResult, SessionState, Task, TaskStatus,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A task from literals (the scenarios crate's builder, the one used everywhere).
pub use scenarios::task;

/// How long a connection attempt may take before the test fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection timeout of a lazy channel: short, so a restarted server is reached again soon.
const LAZY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the waiting helpers poll `Get` for a final state.
const POLL: Duration = Duration::from_millis(50);
/// How often [`wait_state`] polls: it waits for progress a test then acts on mid-run.
const STATE_POLL: Duration = Duration::from_millis(10);

fn endpoint_uri(uri: String) -> Endpoint {
    Endpoint::from_shared(uri).expect("a socket address makes a valid endpoint URI")
}

/// A plain-text endpoint for `addr` with a connection timeout.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    endpoint_uri(format!("http://{addr}")).connect_timeout(CONNECT_TIMEOUT)
}

/// A TLS endpoint for `127.0.0.1:port` (the name the test certificates carry) with `tls`
/// as the client's configuration and a connection timeout.
pub fn tls_endpoint(port: u16, tls: ClientTlsConfig) -> Endpoint {
    endpoint_uri(format!("https://127.0.0.1:{port}"))
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .expect("the test TLS configuration applies to an https endpoint")
}

/// A channel to `addr`, connected now (the test fails if nothing answers).
pub async fn channel(addr: SocketAddr) -> Channel {
    endpoint(addr)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A channel to `addr` that connects on first use and again after every failure.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    endpoint(addr)
        .connect_timeout(LAZY_CONNECT_TIMEOUT)
        .connect_lazy()
}

/// An executor client connected to `addr`.
pub async fn executor_client(addr: SocketAddr) -> ExecutorClient<Channel> {
    ExecutorClient::new(channel(addr).await)
}

/// A router client connected to `addr`.
pub async fn router_client(addr: SocketAddr) -> RouterClient<Channel> {
    RouterClient::new(channel(addr).await)
}

/// A task for the simulated agent needing `iterations` single-path iterations, with
/// `extra` labels.
pub fn sim_task(id: &str, complexity: Complexity, iterations: u32, extra: &[(&str, &str)]) -> Task {
    let description = format!("simulated task {id}");
    let mut t = task(id, &description, complexity, 10.0, &["org/app"], extra);
    t.labels
        .insert("sim.iterations".into(), iterations.to_string());
    t
}

/// Whether a task in `state` has ended (completed, failed or cancelled).
pub fn is_final(state: &SessionState) -> bool {
    matches!(
        TaskStatus::try_from(state.status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    )
}

/// `Get` of `id` with up to `limit` records of its iteration log.
pub async fn get_with_iterations(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    limit: u32,
) -> GetResponse {
    client
        .get(GetRequest {
            task_id: id.into(),
            include_iterations: true,
            iteration_limit: limit,
        })
        .await
        .unwrap_or_else(|e| panic!("Get {id}: {e}"))
        .into_inner()
}

/// The current state of `id`.
pub async fn state(client: &mut ExecutorClient<Channel>, id: &str) -> SessionState {
    client
        .get(GetRequest {
            task_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Get {id}: {e}"))
        .into_inner()
        .state
        .unwrap_or_else(|| panic!("Get {id} returned no state"))
}

/// Polls the state of `id` until `until` holds for it; panics after `timeout`.
pub async fn wait_state(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
    until: impl Fn(&SessionState) -> bool,
) -> SessionState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = state(client, id).await;
        if until(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} did not reach the awaited state within {timeout:?}: {s:?}"
        );
        tokio::time::sleep(STATE_POLL).await;
    }
}

/// Polls `request` until the task it names is final; `None` if `timeout` passes first.
pub async fn try_wait_final(
    client: &mut ExecutorClient<Channel>,
    request: GetRequest,
    timeout: Duration,
) -> Option<GetResponse> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(request.clone()).await {
            let r = r.into_inner();
            if r.state.as_ref().is_some_and(is_final) {
                return Some(r);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `id` is final and returns its state; panics after `timeout`.
pub async fn wait_final(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
) -> SessionState {
    let request = GetRequest {
        task_id: id.into(),
        ..Default::default()
    };
    try_wait_final(client, request, timeout)
        .await
        .and_then(|r| r.state)
        .unwrap_or_else(|| panic!("{id} is stuck: not final within {timeout:?}"))
}

/// Like [`wait_final`], returning the state with up to 1000 records of the iteration log.
pub async fn wait_final_with_iterations(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
) -> GetResponse {
    let request = GetRequest {
        task_id: id.into(),
        include_iterations: true,
        iteration_limit: 1000,
    };
    try_wait_final(client, request, timeout)
        .await
        .unwrap_or_else(|| panic!("{id} is stuck: not final within {timeout:?}"))
}

/// `Run` of `task` bounded to `max_iterations` (0 = the executor's bound).
pub async fn run(
    client: &mut ExecutorClient<Channel>,
    task: Task,
    max_iterations: u32,
) -> RunResult {
    let id = task.id.clone();
    run_request(
        client,
        RunRequest {
            task: Some(task),
            resume: false,
            max_iterations,
            use_multi_agent: None,
            budget_usd: None,
        },
    )
    .await
    .unwrap_or_else(|| panic!("Run {id} returned no result"))
}

/// The plan's context reset: `Run` with only the id of `id`, `resume = true` and
/// `max_iterations`.
pub async fn resume(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    max_iterations: u32,
) -> RunResult {
    run_request(
        client,
        RunRequest {
            task: Some(Task {
                id: id.into(),
                ..Default::default()
            }),
            resume: true,
            max_iterations,
            use_multi_agent: None,
            budget_usd: None,
        },
    )
    .await
    .unwrap_or_else(|| panic!("resumed Run {id} returned no result"))
}

async fn run_request(
    client: &mut ExecutorClient<Channel>,
    request: RunRequest,
) -> Option<RunResult> {
    let id = request
        .task
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_default();
    client
        .run(request)
        .await
        .unwrap_or_else(|e| panic!("Run {id}: {e}"))
        .into_inner()
        .result
}
