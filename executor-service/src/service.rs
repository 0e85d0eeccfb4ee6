//! The `taskrouter.v1.Executor` gRPC service: request validation, then the engine.

use crate::approval::{ANONYMOUS, APPROVER_ROLE, MAX_COMMENT_BYTES};
use crate::autonomous_loop::{AutonomousLoop, is_final};
use crate::decision::GateDecision;
use crate::error::Error;
use crate::run::RunOptions;
use service_kit::Shutdown;
use service_kit::auth::Identity;
use service_kit::validation::{TaskLimits, Violations, check_task, check_task_id};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::executor_server::Executor;
use taskrouter_proto::v1::{
    ApprovalGate, CancelRequest, CancelResponse, Complexity, Decision, DecisionRequest,
    DecisionResponse, GetRequest, GetResponse, ListIterationsRequest, ListIterationsResponse,
    ListTasksRequest, ListTasksResponse, ProgressEvent, RunRequest, RunResponse, SubmitRequest,
    SubmitResponse, Task, TaskStatus, WatchRequest, progress_event,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Largest iteration bound a request may ask for.
pub const MAX_ITERATIONS_LIMIT: u32 = 100_000;
/// Most iteration records one Get returns.
pub const MAX_ITERATION_LIMIT: u32 = 1_000;

/// The Executor service.
pub struct ExecutorService {
    engine: Arc<AutonomousLoop>,
    limits: TaskLimits,
    shutdown: Shutdown,
    /// Longest one blocking read of a watched task's events waits; after an empty one the
    /// task's status is checked (a final task with nothing more to read ends the stream).
    watch_wait: Duration,
}

impl ExecutorService {
    /// A service over `engine`.
    pub fn new(engine: Arc<AutonomousLoop>, limits: TaskLimits, shutdown: Shutdown) -> Self {
        Self {
            engine,
            limits,
            shutdown,
            watch_wait: Duration::from_secs(2),
        }
    }
}

fn require_task<'a>(v: &mut Violations, task: &'a Option<Task>) -> Option<&'a Task> {
    if task.is_none() {
        v.add("task", "is required");
    }
    task.as_ref()
}

fn check_budget(v: &mut Violations, budget_usd: Option<f64>) {
    if let Some(b) = budget_usd
        && let Err(problem) = crate::budget::check_budget(b)
    {
        v.add("budget_usd", problem);
    }
}

/// The `tenant` label becomes part of a Redis key: it must be a plain name.
fn check_tenant(v: &mut Violations, field: &str, task: &Task) {
    if let Some(t) = task.labels.get(crate::budget::TENANT_LABEL)
        && !crate::budget::valid_tenant_name(t)
    {
        v.add(
            format!("{field}.labels[tenant]"),
            "must be 1..=64 characters of A-Z a-z 0-9 . _ -",
        );
    }
}

/// With workspaces on, each repository name becomes part of a remote URL and a path:
/// refused at the door, so a bad name never reaches a worker.
fn check_repositories(v: &mut Violations, field: &str, task: &Task, workspaces: bool) {
    if !workspaces {
        return;
    }
    for (i, repo) in task.repositories.iter().enumerate() {
        // Blank names are already reported by `check_task`.
        if repo.trim().is_empty() {
            continue;
        }
        if let Err(problem) = crate::workspace::refname::check_repo_name(repo) {
            v.add(format!("{field}.repositories[{i}]"), problem);
        }
    }
}

fn check_decision(v: &mut Violations, req: &DecisionRequest) {
    check_task_id(v, "task_id", &req.task_id);
    match ApprovalGate::try_from(req.gate) {
        Ok(ApprovalGate::BeforeStart | ApprovalGate::BeforeComplete) => {}
        _ => v.add(
            "gate",
            "must be APPROVAL_GATE_BEFORE_START or APPROVAL_GATE_BEFORE_COMPLETE",
        ),
    }
    if req.comment.len() > MAX_COMMENT_BYTES {
        v.add(
            "comment",
            format!("must be at most {MAX_COMMENT_BYTES} bytes"),
        );
    }
}

fn check_bound(v: &mut Violations, max_iterations: u32) {
    if max_iterations > MAX_ITERATIONS_LIMIT {
        v.add(
            "max_iterations",
            format!("must be at most {MAX_ITERATIONS_LIMIT}"),
        );
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<ProgressEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        async {
            // The request span is parented on the caller's context: the queue entry
            // carries it, so the worker's run joins the caller's trace.
            let parent = service_kit::trace_context::current_traceparent();
            let req = request.into_inner();
            let mut v = Violations::new();
            if let Some(task) = require_task(&mut v, &req.task) {
                check_task(&mut v, "task", task, &self.limits);
                check_tenant(&mut v, "task", task);
                check_repositories(&mut v, "task", task, self.engine.has_workspaces());
            }
            check_bound(&mut v, req.max_iterations);
            check_budget(&mut v, req.budget_usd);
            Error::check(v)?;
            let task = req.task.unwrap_or_default();
            let (state, created) = self
                .engine
                .submit(
                    task,
                    req.max_iterations,
                    req.use_multi_agent,
                    req.budget_usd,
                    &parent,
                )
                .await?;
            Ok(Response::new(SubmitResponse {
                state: Some(state),
                created,
            }))
        }
        .await
    }

    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        async {
            let req = request.into_inner();
            let mut v = Violations::new();
            let mut id_only = false;
            if let Some(task) = require_task(&mut v, &req.task) {
                // Resuming needs only the id; anything more must still be valid.
                id_only = req.resume
                    && task.description.is_empty()
                    && task.complexity == Complexity::Unspecified as i32;
                if id_only {
                    check_task_id(&mut v, "task.id", &task.id);
                } else {
                    check_task(&mut v, "task", task, &self.limits);
                    check_tenant(&mut v, "task", task);
                    check_repositories(&mut v, "task", task, self.engine.has_workspaces());
                }
            }
            check_bound(&mut v, req.max_iterations);
            check_budget(&mut v, req.budget_usd);
            Error::check(v)?;
            let task = req.task.unwrap_or_default();
            if id_only {
                // An id alone can only resume: it must not create an empty, unvalidated task.
                self.engine.get(&task.id).await?;
            }
            let opts = RunOptions {
                resume: req.resume,
                max_iterations: req.max_iterations,
                use_multi_agent: req.use_multi_agent,
                budget_usd: req.budget_usd,
            };
            let result = self.engine.run(task, opts).await?;
            Ok(Response::new(RunResponse {
                result: Some(result),
            }))
        }
        .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        async {
            let req = request.into_inner();
            let mut v = Violations::new();
            check_task_id(&mut v, "task_id", &req.task_id);
            if req.iteration_limit > MAX_ITERATION_LIMIT {
                v.add(
                    "iteration_limit",
                    format!("must be at most {MAX_ITERATION_LIMIT}"),
                );
            }
            Error::check(v)?;
            let state = self.engine.get(&req.task_id).await?;
            let iterations = if req.include_iterations {
                let limit = match req.iteration_limit {
                    0 => 100,
                    n => n as usize,
                };
                self.engine.iterations(&req.task_id, limit).await?
            } else {
                Vec::new()
            };
            Ok(Response::new(GetResponse {
                state: Some(state),
                iterations,
            }))
        }
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        check_task_id(&mut v, "task_id", &req.task_id);
        Error::check(v)?;
        // NOT_FOUND up front rather than an empty stream.
        self.engine.get(&req.task_id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        let poll = self.watch_wait;
        tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            loop {
                let batch = tokio::select! {
                    b = engine.wait_events(&req.task_id, cursor.as_deref(), 100, poll) => b,
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => {
                        let _ = tx.send(Err(Status::from(Error::ShuttingDown))).await;
                        return;
                    }
                };
                let events = match batch {
                    Ok(evs) => evs,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if events.is_empty() {
                    // Events expire with the archive; a final state with nothing left
                    // to read ends the stream.
                    match engine.get(&req.task_id).await {
                        Ok(s) if is_final(TaskStatus::try_from(s.status).unwrap_or_default()) => {
                            return;
                        }
                        Err(Error::NotFound { .. }) => return,
                        _ => {}
                    }
                    continue;
                }
                for stored in events {
                    cursor = Some(stored.cursor);
                    if stored.event.sequence <= req.after_sequence {
                        continue;
                    }
                    // The stream ends with the task, or when a budget stops it (a resume
                    // with a larger budget is watched again).
                    let last = matches!(
                        stored.event.kind,
                        Some(
                            progress_event::Kind::Finished(_)
                                | progress_event::Kind::BudgetStopped(_)
                        )
                    );
                    if tx.send(Ok(stored.event)).await.is_err() || last {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        async {
            let req = request.into_inner();
            let mut v = Violations::new();
            check_task_id(&mut v, "task_id", &req.task_id);
            Error::check(v)?;
            let state = self.engine.cancel(&req.task_id).await?;
            Ok(Response::new(CancelResponse { state: Some(state) }))
        }
        .await
    }

    async fn list(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let store = self.engine.store();
        let resp = crate::task_list::list(store.as_ref(), request.get_ref()).await?;
        Ok(Response::new(resp))
    }

    async fn list_iterations(
        &self,
        request: Request<ListIterationsRequest>,
    ) -> Result<Response<ListIterationsResponse>, Status> {
        let store = self.engine.store();
        let resp = crate::task_list::list_iterations(store.as_ref(), request.get_ref()).await?;
        Ok(Response::new(resp))
    }

    async fn approve(
        &self,
        request: Request<DecisionRequest>,
    ) -> Result<Response<DecisionResponse>, Status> {
        self.decide(request, Decision::Approved).await
    }

    async fn reject(
        &self,
        request: Request<DecisionRequest>,
    ) -> Result<Response<DecisionResponse>, Status> {
        self.decide(request, Decision::Rejected).await
    }
}

impl ExecutorService {
    /// Approve and Reject: the caller needs the approver role (when authentication is
    /// on), the request must be valid, then the decision applies.
    async fn decide(
        &self,
        request: Request<DecisionRequest>,
        decision: Decision,
    ) -> Result<Response<DecisionResponse>, Status> {
        let identity = request.extensions().get::<Identity>().cloned();
        let by = match &identity {
            // Authentication is off: anyone who can call can decide.
            None => ANONYMOUS.to_string(),
            Some(id) if id.has_role(APPROVER_ROLE) => id.name.clone(),
            Some(id) => {
                return Err(Error::PermissionDenied(format!(
                    "{} lacks the {APPROVER_ROLE} role",
                    id.name
                ))
                .into());
            }
        };
        let req = request.into_inner();
        let mut v = Violations::new();
        check_decision(&mut v, &req);
        Error::check(v)?;
        let d = GateDecision {
            gate: ApprovalGate::try_from(req.gate).unwrap_or_default(),
            decision,
            by: &by,
            comment: &req.comment,
            timed_out: false,
        };
        let state = crate::decision::decide(&self.engine, &req.task_id, d).await?;
        Ok(Response::new(DecisionResponse { state: Some(state) }))
    }
}
