//! Several executor processes sharing one queue: every task completes exactly once,
//! none is lost, and a killed executor's tasks are reclaimed and finished by another.

mod common;

use common::Cluster;
use std::time::Duration;
use taskrouter_proto::v1::{Complexity, SubmitRequest, TaskStatus};
use test_support::client::{state, task, wait_final, wait_final_with_iterations};

fn small_task(i: usize, iterations: u32, latency_ms: u32) -> taskrouter_proto::v1::Task {
    task(
        &format!("T-{i:03}"),
        "Fix a small bug",
        Complexity::Low,
        5.0,
        &["org/app"],
        &[
            ("sim.iterations", &iterations.to_string()),
            ("sim.latency_ms", &latency_ms.to_string()),
        ],
    )
}

#[tokio::test]
async fn two_executors_complete_fifty_tasks_exactly_once() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "4"]).await;
    c.add_executor("exec-b", &["--concurrency", "4"]).await;
    let mut client = c.client(0).await;
    for i in 0..50 {
        let r = client
            .submit(SubmitRequest {
                task: Some(small_task(i, 3, 5)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.created);
    }
    let mut by_worker = std::collections::HashMap::<String, usize>::new();
    for i in 0..50 {
        let r =
            wait_final_with_iterations(&mut client, &format!("T-{i:03}"), Duration::from_secs(60))
                .await;
        let s = r.state.unwrap();
        assert_eq!(
            TaskStatus::try_from(s.status).unwrap(),
            TaskStatus::Completed
        );
        assert_eq!(s.iteration_count, 3, "T-{i:03}");
        let numbers: Vec<u32> = r.iterations.iter().map(|x| x.iteration).collect();
        assert_eq!(numbers, vec![1, 2, 3], "T-{i:03} ran each iteration once");
        assert!(s.archived);
        *by_worker
            .entry(s.worker_id.split('-').take(2).collect::<Vec<_>>().join("-"))
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 50);
    assert!(
        by_worker.len() == 2,
        "both executors took work: {by_worker:?}"
    );
    // The queue is drained: nothing pending, nothing left behind.
    let mut conn = c.redis.connection().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(
            executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
                .stream
                .as_str(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
}

#[tokio::test]
async fn a_killed_executors_tasks_are_reclaimed_and_finished_with_the_right_totals() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "4"]).await;
    let mut client = c.client(0).await;
    for i in 0..8 {
        client
            .submit(SubmitRequest {
                task: Some(small_task(i, 12, 80)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Wait until exec-a is mid-iteration on several tasks, then kill it without warning.
    loop {
        let mut started = 0;
        for i in 0..8 {
            let s = state(&mut client, &format!("T-{i:03}")).await;
            if s.iteration_count >= 2 {
                started += 1;
            }
        }
        if started >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.executors[0].process.kill9();
    c.add_executor("exec-b", &["--concurrency", "4"]).await;
    let mut client = c.client(1).await;
    for i in 0..8 {
        let r =
            wait_final_with_iterations(&mut client, &format!("T-{i:03}"), Duration::from_secs(60))
                .await;
        let s = r.state.unwrap();
        assert_eq!(
            TaskStatus::try_from(s.status).unwrap(),
            TaskStatus::Completed,
            "T-{i:03}"
        );
        assert_eq!(s.iteration_count, 12, "T-{i:03}");
        let numbers: Vec<u32> = r.iterations.iter().map(|x| x.iteration).collect();
        assert_eq!(
            numbers,
            (1..=12).collect::<Vec<_>>(),
            "T-{i:03}: none lost, none doubled"
        );
    }
}

#[tokio::test]
async fn sigterm_drains_an_executor_and_another_continues_at_once() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "2"]).await;
    c.add_executor("exec-b", &["--concurrency", "0"]).await;
    let mut client = c.client(0).await;
    for i in 0..2 {
        client
            .submit(SubmitRequest {
                task: Some(small_task(i, 40, 50)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    loop {
        let s0 = state(&mut client, "T-000").await;
        let s1 = state(&mut client, "T-001").await;
        if s0.iteration_count >= 3 && s1.iteration_count >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.executors[0].process.sigterm();
    let status = c.executors[0]
        .process
        .wait_exit(Duration::from_secs(10))
        .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exec-a drained and exited 0: {status:?}\n{}",
        c.executors[0].process.log_contents()
    );
    // Leases were released, not left to expire.
    let mut conn = c.redis.connection().await;
    for id in ["T-000", "T-001"] {
        let held: Option<String> = redis::cmd("GET")
            .arg(format!("taskrouter:{{{id}}}:lease"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(held.is_none(), "{id} lease released");
    }
    let saved: Vec<u32> = {
        let mut b = c.client(1).await;
        let mut v = Vec::new();
        for id in ["T-000", "T-001"] {
            v.push(state(&mut b, id).await.iteration_count);
        }
        v
    };
    // A fresh replica takes the handed-off tasks well before a lease would have expired.
    let started = std::time::Instant::now();
    c.add_executor("exec-c", &["--concurrency", "2"]).await;
    let mut client = c.client(2).await;
    loop {
        let s = state(&mut client, "T-000").await;
        if s.iteration_count > saved[0] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no progress after handoff"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["T-000", "T-001"] {
        let r = wait_final_with_iterations(&mut client, id, Duration::from_secs(60)).await;
        let numbers: Vec<u32> = r.iterations.iter().map(|x| x.iteration).collect();
        assert_eq!(
            numbers,
            (1..=40).collect::<Vec<_>>(),
            "{id}: nothing lost or doubled across the drain"
        );
    }
}

#[tokio::test]
async fn a_task_whose_deliveries_make_no_progress_is_dead_lettered_and_visible_through_get() {
    let mut c = Cluster::start().await;
    c.extra_executor_args = vec!["--max-deliveries".into(), "1".into()];
    c.add_executor("exec-a", &["--concurrency", "1"]).await;
    let mut client = c.client(0).await;
    // Each iteration takes 20 s: the executor is killed before it checkpoints any.
    client
        .submit(SubmitRequest {
            task: Some(small_task(0, 3, 20_000)),
            ..Default::default()
        })
        .await
        .unwrap();
    loop {
        let s = state(&mut client, "T-000").await;
        if TaskStatus::try_from(s.status).unwrap() == TaskStatus::InProgress {
            assert_eq!(s.iteration_count, 0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.executors[0].process.kill9();
    c.add_executor("exec-b", &["--concurrency", "1"]).await;
    let mut client = c.client(1).await;
    let s = wait_final(&mut client, "T-000", Duration::from_secs(30)).await;
    assert_eq!(TaskStatus::try_from(s.status).unwrap(), TaskStatus::Failed);
    assert!(s.dead_lettered);
    assert_eq!(s.stalled_deliveries, 1);
    assert!(s.last_error.contains("dead-lettered"), "{}", s.last_error);
    // The worker marks the task failed first and then appends the dead letter, so the
    // entry may trail the final state by a moment.
    let mut conn = c.redis.connection().await;
    let key = &executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0].dead_letters;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let n = loop {
        let n: u64 = redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(n, 1);
}
