//! Executor behaviour against a real redis-server over real gRPC.

mod common;

use common::Harness;
use std::time::Duration;
use taskrouter_proto::v1::{
    CancelRequest, Complexity, ExecutionPath, FallbackCause, GetRequest, ReasonCode, RunRequest,
    SubmitRequest, Task, TaskStatus, WatchRequest, progress_event,
};
use test_support::client::{resume, run, sim_task, state, wait_final, wait_state};
use tokio_stream::StreamExt;
use tonic::Code;

fn status(s: i32) -> TaskStatus {
    TaskStatus::try_from(s).unwrap()
}

#[tokio::test]
async fn bounded_run_then_resume_gives_eight_more_and_ten_total() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("TEST-RESUME-001", Complexity::Low, 10, &[]);
    let first = run(&mut h.client, task.clone(), 2).await;
    assert_eq!(status(first.status), TaskStatus::InProgress);
    assert_eq!(first.iterations_this_run, 2);
    assert_eq!(first.total_iterations, 2);

    // A context reset: only the id comes back, with resume and a larger bound.
    let second = resume(&mut h.client, &task.id, 10).await;
    assert_eq!(status(second.status), TaskStatus::Completed);
    assert_eq!(second.iterations_this_run, 8);
    assert_eq!(second.total_iterations, 10);

    let got = h
        .client
        .get(GetRequest {
            task_id: task.id.clone(),
            include_iterations: true,
            iteration_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<u32> = got.iterations.iter().map(|r| r.iteration).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    let state = got.state.unwrap();
    assert!(state.archived);
    // No router configured: the safe default with the reason recorded.
    let analysis = state.analysis.unwrap();
    assert_eq!(
        analysis.reasons[0].code,
        ReasonCode::RouterUnavailable as i32
    );
    assert_eq!(
        state.fallback.unwrap().cause,
        FallbackCause::RouterUnavailable as i32
    );
    h.stop().await;
}

#[tokio::test]
async fn run_without_resume_on_a_known_id_is_already_exists() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-DUP", Complexity::Low, 1, &[]);
    let req = RunRequest {
        task: Some(task),
        resume: false,
        max_iterations: 0,
        use_multi_agent: Some(false),
        budget_usd: None,
    };
    h.client.run(req.clone()).await.unwrap();
    let err = h.client.run(req).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("resume"), "{}", err.message());
    h.stop().await;
}

#[tokio::test]
async fn redis_shows_each_iteration_as_soon_as_it_is_reported() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-LIVE", Complexity::Low, 5, &[("sim.latency_ms", "30")]);
    let mut watcher = h.client.clone();
    let mut runner = h.client.clone();
    let id = task.id.clone();
    let run = tokio::spawn(async move {
        runner
            .run(RunRequest {
                task: Some(task),
                ..Default::default()
            })
            .await
    });
    // The task exists once Run created it; wait for that, then watch.
    let mut stream = loop {
        match watcher
            .watch(WatchRequest {
                task_id: id.clone(),
                after_sequence: 0,
            })
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("watch: {e}"),
        }
    };
    let mut seen = Vec::new();
    let mut last_seq = 0;
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        assert!(ev.sequence > last_seq, "sequence numbers increase");
        last_seq = ev.sequence;
        if let Some(progress_event::Kind::Iteration(done)) = ev.kind {
            // The event is published by the same atomic write as the checkpoint.
            let state = h
                .client
                .get(GetRequest {
                    task_id: id.clone(),
                    include_iterations: true,
                    iteration_limit: 1000,
                })
                .await
                .unwrap()
                .into_inner();
            let stored = state.state.unwrap().iteration_count;
            assert!(
                stored >= done.iteration_count,
                "Redis holds iteration {}",
                done.iteration_count
            );
            assert!(
                state
                    .iterations
                    .iter()
                    .any(|r| r.iteration == done.record.as_ref().unwrap().iteration)
            );
            seen.push(done.iteration_count);
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    let result = run.await.unwrap().unwrap().into_inner().result.unwrap();
    assert_eq!(status(result.status), TaskStatus::Completed);
    h.stop().await;
}

#[tokio::test]
async fn corrupted_state_is_a_clear_error_kept_for_inspection_and_other_tasks_still_run() {
    let mut h = Harness::start(|_| {}).await;
    let mut conn = h.redis.connection().await;
    let plain = h.state_key("BAD-1");
    let _: () = redis::cmd("SET")
        .arg(&plain)
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    let wrong_schema = h.state_key("BAD-2");
    let _: () = redis::cmd("HSET")
        .arg(&wrong_schema)
        .arg("schema")
        .arg("99")
        .arg("version")
        .arg("1")
        .arg("data")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let bad_bytes = h.state_key("BAD-3");
    let _: () = redis::cmd("HSET")
        .arg(&bad_bytes)
        .arg("schema")
        .arg("1")
        .arg("version")
        .arg("1")
        .arg("data")
        .arg(vec![0xffu8, 0xff, 0xff, 0x01])
        .query_async(&mut conn)
        .await
        .unwrap();
    for (id, key) in [
        ("BAD-1", &plain),
        ("BAD-2", &wrong_schema),
        ("BAD-3", &bad_bytes),
    ] {
        let err = h
            .client
            .get(GetRequest {
                task_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{id}: {err:?}");
        assert!(
            err.message().contains(key.as_str()),
            "{id}: {}",
            err.message()
        );
        // Resuming it is refused the same way, and nothing is overwritten.
        let err = h
            .client
            .run(RunRequest {
                task: Some(Task {
                    id: id.into(),
                    ..Default::default()
                }),
                resume: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
    }
    let kept: String = redis::cmd("GET")
        .arg(&plain)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, "garbage");
    let schema: String = redis::cmd("HGET")
        .arg(&wrong_schema)
        .arg("schema")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(schema, "99");

    let ok = h
        .client
        .run(RunRequest {
            task: Some(sim_task("GOOD-1", Complexity::Low, 2, &[])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(status(ok.status), TaskStatus::Completed);
    h.stop().await;
}

/// The executor's Redis store under the harness's key prefix.
async fn store_of(h: &Harness) -> executor_service::session::RedisStore {
    executor_service::session::RedisStore::new(h.redis.connection_manager().await, "trtest")
}

/// The state `Submit` creates for `task`.
fn pending_state(task: &Task) -> taskrouter_proto::v1::SessionState {
    taskrouter_proto::v1::SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: task.id.clone(),
        task: Some(task.clone()),
        status: TaskStatus::Pending as i32,
        max_iterations: 50,
        ..Default::default()
    }
}

fn submitted_event(id: &str) -> taskrouter_proto::v1::ProgressEvent {
    taskrouter_proto::v1::ProgressEvent {
        task_id: id.into(),
        kind: Some(progress_event::Kind::Submitted(
            taskrouter_proto::v1::Submitted {},
        )),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_submit_retried_after_a_crash_before_queueing_still_runs_the_task() {
    use executor_service::session::SessionStore as _;
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-HALF-SUBMITTED", Complexity::Low, 3, &[]);
    // What a crash between storing the task and queueing it leaves behind.
    store_of(&h)
        .await
        .create(&pending_state(&task), &submitted_event(&task.id))
        .await
        .unwrap();
    let r = h
        .client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.created, "the retry finds the stored task");
    let s = wait_final(&mut h.client, &task.id, Duration::from_secs(15)).await;
    assert_eq!(status(s.status), TaskStatus::Completed);
    assert_eq!(s.iteration_count, 3);
    h.stop().await;
}

#[tokio::test]
async fn a_submitter_that_stopped_after_queueing_before_storing_still_gets_its_task_run() {
    use executor_service::queue::WorkQueue as _;
    use prost::Message as _;
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-QUEUED-ONLY", Complexity::Low, 3, &[]);
    // What a crash between queueing the task and storing it leaves behind: the entry
    // with the initial state, no state. Nobody retries.
    let queue =
        executor_service::queue::RedisQueue::new(h.redis.connection_manager().await, "trtest");
    queue
        .enqueue(&task.id, "", &pending_state(&task).encode_to_vec())
        .await
        .unwrap();
    let s = wait_final(&mut h.client, &task.id, Duration::from_secs(15)).await;
    assert_eq!(status(s.status), TaskStatus::Completed);
    assert_eq!(s.iteration_count, 3);
    // A later retry of the same Submit finds the finished task.
    let r = h
        .client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.created);
    h.stop().await;
}

#[tokio::test]
async fn a_run_stopped_after_the_agent_reported_done_resumes_as_complete_without_another_iteration()
{
    use executor_service::session::Lease;
    use executor_service::session::{Checkpoint, SessionStore as _};
    let mut h = Harness::start(|c| c.settings.concurrency = 0).await;
    let task = sim_task("T-DONE-UNFINISHED", Complexity::Low, 2, &[]);
    let store = store_of(&h).await;
    store
        .create(&pending_state(&task), &submitted_event(&task.id))
        .await
        .unwrap();
    // A worker ran both iterations (the second reported done) and crashed before
    // marking the task complete.
    let lease: Lease = store
        .acquire_lease(&task.id, "crashed-worker:1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let mut state = pending_state(&task);
    state.status = TaskStatus::InProgress as i32;
    let mut version = 1;
    for n in 1..=2u32 {
        state.iteration_count = n;
        let record = taskrouter_proto::v1::IterationRecord {
            iteration: n,
            role: "agent".into(),
            output: format!("sim agent iteration {n}/2"),
            done: n == 2,
            worker_id: "crashed-worker".into(),
            ..Default::default()
        };
        version = store
            .checkpoint(Checkpoint {
                state: &state,
                expected_version: version,
                lease: &lease,
                iteration: Some(&record),
                events: &[],
                archive_ttl: None,
                unreserved_spend: Default::default(),
                index: None,
            })
            .await
            .unwrap()
            .version;
    }
    store.release_lease(&lease).await.unwrap();

    let r = resume(&mut h.client, &task.id, 0).await;
    assert_eq!(status(r.status), TaskStatus::Completed);
    assert_eq!(
        r.iterations_this_run, 0,
        "no iteration after the agent said done"
    );
    assert_eq!(r.total_iterations, 2);
    h.stop().await;
}

#[tokio::test]
async fn a_queued_task_whose_fields_are_not_text_is_dead_lettered_not_retried_forever() {
    let mut h = Harness::start(|_| {}).await;
    let mut conn = h.redis.connection().await;
    // A `schema` that is not UTF-8 and a `version` that is not a number.
    let _: () = redis::cmd("HSET")
        .arg(h.state_key("BAD-BYTES"))
        .arg("schema")
        .arg(vec![0x80u8])
        .arg("version")
        .arg("-1")
        .arg("data")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = h
        .client
        .get(GetRequest {
            task_id: "BAD-BYTES".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let _: String = redis::cmd("XADD")
        .arg(
            executor_service::queue::redis_queue::shard_keys("trtest", 1)[0]
                .stream
                .as_str(),
        )
        .arg("*")
        .arg("task_id")
        .arg("BAD-BYTES")
        .arg("traceparent")
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead: u64 = redis::cmd("XLEN")
            .arg(
                executor_service::queue::redis_queue::shard_keys("trtest", 1)[0]
                    .dead_letters
                    .as_str(),
            )
            .query_async(&mut conn)
            .await
            .unwrap();
        if dead == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unreadable task was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued: u64 = redis::cmd("XLEN")
        .arg(
            executor_service::queue::redis_queue::shard_keys("trtest", 1)[0]
                .stream
                .as_str(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, 0, "nothing is left to be redelivered");
    h.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_running_task_at_the_next_boundary() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task(
        "T-CANCEL",
        Complexity::Low,
        200,
        &[("sim.latency_ms", "20")],
    );
    h.client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            max_iterations: 500,
            use_multi_agent: Some(false),
            budget_usd: None,
        })
        .await
        .unwrap();
    // Let it get going.
    wait_state(&mut h.client, &task.id, Duration::from_secs(60), |s| {
        s.iteration_count >= 3
    })
    .await;
    let resp = h
        .client
        .cancel(CancelRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.state.unwrap().cancel_requested);
    let fin = wait_final(&mut h.client, &task.id, Duration::from_secs(10)).await;
    assert_eq!(status(fin.status), TaskStatus::Cancelled);
    assert!(
        fin.iteration_count < 200,
        "stopped early at {}",
        fin.iteration_count
    );
    let mut conn = h.redis.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(h.state_key(&task.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "archived with a TTL, got {ttl}");
    h.stop().await;
}

#[tokio::test]
async fn cancel_of_a_pending_task_cancels_it_at_once() {
    let mut h = Harness::start(|c| c.settings.concurrency = 0).await;
    let task = sim_task("T-CANCEL-PENDING", Complexity::Low, 3, &[]);
    h.client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let resp = h
        .client
        .cancel(CancelRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = resp.state.unwrap();
    assert_eq!(status(s.status), TaskStatus::Cancelled);
    assert_eq!(s.iteration_count, 0);
    h.stop().await;
}

#[tokio::test]
async fn completed_task_is_archived_with_the_configured_ttl_and_still_readable() {
    let mut h = Harness::start(|c| c.settings.archive_ttl = Duration::from_secs(3600)).await;
    let task = sim_task("T-ARCHIVE", Complexity::Low, 2, &[]);
    h.client
        .run(RunRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut conn = h.redis.connection().await;
    for suffix in ["state", "log", "events"] {
        let key = format!("trtest:{{T-ARCHIVE}}:{suffix}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{key} ttl {ttl}");
    }
    let s = state(&mut h.client, &task.id).await;
    assert!(s.archived);
    assert_eq!(status(s.status), TaskStatus::Completed);
    assert!(s.archive_expires_at.is_some());
    h.stop().await;
}

/// The iteration that ends a task is written by the finishing write itself: one write
/// fewer per task, with nothing lost and the events in order.
#[tokio::test]
async fn the_last_iteration_is_written_with_the_finish() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-LAST", Complexity::Low, 3, &[]);
    h.client
        .run(RunRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = h
        .client
        .get(GetRequest {
            task_id: task.id.clone(),
            include_iterations: true,
            iteration_limit: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let s = got.state.unwrap();
    assert_eq!(status(s.status), TaskStatus::Completed);
    // create, start, iterations 1 and 2, then iteration 3 with the finish.
    assert_eq!(s.version, 5);
    let log: Vec<(u32, bool)> = got
        .iterations
        .iter()
        .map(|r| (r.iteration, r.done))
        .collect();
    assert_eq!(log, [(1, false), (2, false), (3, true)]);
    let mut events = h
        .client
        .watch(WatchRequest {
            task_id: task.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        assert_eq!(
            ev.sequence,
            kinds.len() as u64 + 1,
            "no gap in the sequence"
        );
        kinds.push(match ev.kind {
            Some(progress_event::Kind::Iteration(i)) => format!("iteration {}", i.iteration_count),
            Some(progress_event::Kind::Finished(_)) => "finished".to_string(),
            _ => "other".to_string(),
        });
    }
    assert_eq!(
        kinds[kinds.len() - 4..],
        ["iteration 1", "iteration 2", "iteration 3", "finished"]
    );
    h.stop().await;
}

#[tokio::test]
async fn submitting_the_same_id_twice_starts_one_run() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-ONCE", Complexity::Low, 4, &[]);
    let a = h
        .client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let b = h
        .client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.created);
    assert!(!b.created);
    let fin = wait_final(&mut h.client, &task.id, Duration::from_secs(10)).await;
    assert_eq!(status(fin.status), TaskStatus::Completed);
    assert_eq!(fin.iteration_count, 4);
    let got = h
        .client
        .get(GetRequest {
            task_id: task.id,
            include_iterations: true,
            iteration_limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.iterations.len(), 4);
    h.stop().await;
}

#[tokio::test]
async fn forced_single_path_is_recorded() {
    let mut h = Harness::start(|_| {}).await;
    let task = sim_task("T-FORCED", Complexity::Critical, 2, &[]);
    let r = h
        .client
        .run(RunRequest {
            task: Some(task),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.path, ExecutionPath::SingleAgent as i32);
    let s = r.state.unwrap();
    assert!(s.force_single_agent);
    assert_eq!(
        s.analysis.unwrap().reasons[0].code,
        ReasonCode::ForcedSingleAgent as i32
    );
    assert!(s.fallback.is_none());
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let mut h = Harness::start(|_| {}).await;
    let good = sim_task("T-OK", Complexity::Low, 1, &[]);
    let cases: Vec<(SubmitRequest, &str)> = vec![
        (
            SubmitRequest {
                task: None,
                ..Default::default()
            },
            "task",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    id: String::new(),
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.id",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    estimated_value_usd: f64::NAN,
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.estimated_value_usd",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    estimated_value_usd: -5.0,
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.estimated_value_usd",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    complexity: 0,
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.complexity",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    complexity: 42,
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.complexity",
        ),
        (
            SubmitRequest {
                task: Some(Task {
                    description: "x".repeat(1024 * 1024 + 1),
                    ..good.clone()
                }),
                ..Default::default()
            },
            "task.description",
        ),
        (
            SubmitRequest {
                task: Some(good.clone()),
                max_iterations: 1_000_000,
                ..Default::default()
            },
            "max_iterations",
        ),
    ];
    for (req, field) in cases {
        let err = h.client.submit(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        let fields: Vec<String> = service_kit::validation::field_violations(&err)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    }
    let err = h
        .client
        .get(GetRequest {
            task_id: "has space".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h
        .client
        .get(GetRequest {
            task_id: "NOPE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .client
        .cancel(CancelRequest {
            task_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        service_kit::validation::field_violations(&err)[0].field,
        "task_id"
    );
    // Nothing was stored by the rejected requests.
    let mut conn = h.redis.connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("trtest:{*")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The (empty) queue stream exists from the consumer group's creation.
    let queue = executor_service::queue::redis_queue::shard_keys("trtest", 1);
    keys.retain(|k| *k != queue[0].stream);
    assert!(keys.is_empty(), "{keys:?}");
    h.stop().await;
}

#[tokio::test]
async fn redis_restart_mid_run_loses_no_checkpointed_iteration() {
    let redis = test_support::RedisServer::start_with(test_support::RedisOptions {
        appendonly: true,
        password: None,
    });
    let mut h = Harness::start_with_redis(redis, |c| {
        c.settings.concurrency = 1;
    })
    .await;
    let task = sim_task(
        "T-REDIS-DOWN",
        Complexity::Low,
        20,
        &[("sim.latency_ms", "50")],
    );
    h.client
        .submit(SubmitRequest {
            task: Some(task.clone()),
            max_iterations: 20,
            use_multi_agent: Some(false),
            budget_usd: None,
        })
        .await
        .unwrap();
    let before = loop {
        let s = state(&mut h.client, &task.id).await;
        if s.iteration_count >= 5 {
            break s.iteration_count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    h.redis.stop();
    // While Redis is away, calls fail with UNAVAILABLE and health says NOT_SERVING.
    let err = h
        .client
        .get(GetRequest {
            task_id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let channel = test_support::client::channel(h.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut not_serving = false;
    for _ in 0..50 {
        let st = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "taskrouter.v1.Executor".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if st == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_serving, "health turns NOT_SERVING while Redis is down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.redis.start_again();
    let fin = wait_final(&mut h.client, &task.id, Duration::from_secs(30)).await;
    assert_eq!(status(fin.status), TaskStatus::Completed);
    assert_eq!(fin.iteration_count, 20);
    assert!(fin.iteration_count >= before);
    let got = h
        .client
        .get(GetRequest {
            task_id: task.id.clone(),
            include_iterations: true,
            iteration_limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<u32> = got.iterations.iter().map(|r| r.iteration).collect();
    assert_eq!(
        numbers,
        (1..=20).collect::<Vec<_>>(),
        "every iteration exactly once"
    );
    h.stop().await;
}
