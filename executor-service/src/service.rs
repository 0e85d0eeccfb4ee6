//! The `taskrouter.v1.Executor` gRPC service: request validation, then the engine.

use crate::autonomous_loop::{AutonomousLoop, is_final};
use crate::error::Error;
use crate::run::RunOptions;
use service_kit::Shutdown;
use service_kit::validation::{TaskLimits, Violations, check_task, check_task_id};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::executor_server::Executor;
use taskrouter_proto::v1::{
    CancelRequest, CancelResponse, Complexity, GetRequest, GetResponse, ListIterationsRequest,
    ListIterationsResponse, ListTasksRequest, ListTasksResponse, ProgressEvent, RunRequest,
    RunResponse, SubmitRequest, SubmitResponse, Task, TaskStatus, WatchRequest, progress_event,
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
            }
            check_bound(&mut v, req.max_iterations);
            Error::check(v)?;
            let task = req.task.unwrap_or_default();
            let (state, created) = self
                .engine
                .submit(task, req.max_iterations, req.use_multi_agent, &parent)
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
                }
            }
            check_bound(&mut v, req.max_iterations);
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
                    let last = matches!(stored.event.kind, Some(progress_event::Kind::Finished(_)));
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
}
