//! The outcome source against a real redis-server holding records written by the
//! executor's own store: which finished tasks a check or a diff sees, across pages.

use executor_service::session::{RedisStore, SessionStore as _};
use rollout_controller::outcomes::{OutcomeSource, RecordQuery, RedisRecords};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use taskrouter_proto::v1::{ProgressEvent, RoutingAnalysis, SessionState, Task, TaskStatus};
use test_support::RedisServer;

fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A record as the executor stores it.
fn record(
    id: &str,
    status: TaskStatus,
    version: &str,
    finished: SystemTime,
    updated: SystemTime,
) -> SessionState {
    let is_final = matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    );
    SessionState {
        task_id: id.to_string(),
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        status: status as i32,
        created_at: Some(ts(finished - Duration::from_secs(30))),
        updated_at: Some(ts(updated)),
        finished_at: is_final.then(|| ts(finished)),
        analysis: Some(RoutingAnalysis {
            policy_version: version.to_string(),
            ..Default::default()
        }),
        task: Some(Task {
            description: format!("description of {id}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ids(states: &[SessionState]) -> BTreeSet<String> {
    states.iter().map(|s| s.task_id.clone()).collect()
}

#[tokio::test]
async fn a_check_sees_exactly_the_steps_tasks_finished_in_the_window() {
    let redis = RedisServer::start();
    let conn = redis.connection_manager().await;
    let store = RedisStore::new(conn.clone(), "taskrouter");
    let now = SystemTime::now();
    let recent = now - Duration::from_secs(60);
    let old = now - Duration::from_secs(7200);
    for s in [
        record("IN-DONE", TaskStatus::Completed, "v2", recent, recent),
        record("IN-FAILED", TaskStatus::Failed, "v2", recent, recent),
        record("IN-CANCELLED", TaskStatus::Cancelled, "v2", recent, recent),
        record("OUT-OLD", TaskStatus::Completed, "v2", old, old),
        // Finished before the window, touched since (e.g. archived): still outside.
        record("OUT-OLD-TOUCHED", TaskStatus::Completed, "v2", old, recent),
        record(
            "OUT-OTHER-VERSION",
            TaskStatus::Completed,
            "v1",
            recent,
            recent,
        ),
        record("OUT-RUNNING", TaskStatus::InProgress, "v2", recent, recent),
    ] {
        store.create(&s, &ProgressEvent::default()).await.unwrap();
    }
    let records = RedisRecords::new(conn, "taskrouter");
    let since = now - Duration::from_secs(3600);

    let step = RecordQuery {
        policy_version: Some("v2".into()),
        ..RecordQuery::since(since)
    };
    let got = records.finished(&step).await.unwrap();
    assert_eq!(
        ids(&got),
        ["IN-CANCELLED", "IN-DONE", "IN-FAILED"]
            .map(String::from)
            .into()
    );
    // A check needs no task (and so no description).
    assert!(got.iter().all(|s| s.task.is_none()));

    // A diff wants every version, and each task to re-evaluate it.
    let diff = RecordQuery {
        with_task: true,
        ..RecordQuery::since(since)
    };
    let got = records.finished(&diff).await.unwrap();
    assert_eq!(
        ids(&got),
        ["IN-CANCELLED", "IN-DONE", "IN-FAILED", "OUT-OTHER-VERSION"]
            .map(String::from)
            .into()
    );
    for s in &got {
        assert_eq!(
            s.task.as_ref().map(|t| t.description.as_str()),
            Some(format!("description of {}", s.task_id).as_str())
        );
    }
}

#[tokio::test]
async fn every_matching_task_is_read_once_across_pages() {
    let redis = RedisServer::start();
    let conn = redis.connection_manager().await;
    let store = RedisStore::new(conn.clone(), "taskrouter");
    let now = SystemTime::now();
    // More than two pages (500 each), with equal update times across page boundaries.
    let n = 1203;
    for i in 0..n {
        let at = now - Duration::from_secs(60 + (i % 7) as u64);
        let s = record(&format!("T-{i:04}"), TaskStatus::Completed, "v2", at, at);
        store.create(&s, &ProgressEvent::default()).await.unwrap();
    }
    let records = RedisRecords::new(conn, "taskrouter");
    let got = records
        .finished(&RecordQuery::since(now - Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(got.len(), n);
    assert_eq!(ids(&got).len(), n);
}

/// What a check cost before the listing indexes: SCAN every state hash and decode each.
async fn scan_every_state(conn: &mut redis::aio::ConnectionManager) -> usize {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("taskrouter:\\{*\\}:state")
            .arg("COUNT")
            .arg(500)
            .arg("TYPE")
            .arg("hash")
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut decoded = 0;
    for key in keys {
        let (data, task, version): (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("data")
                .arg("task")
                .arg("version")
                .query_async(conn)
                .await
                .unwrap();
        if let Some(data) = data {
            RedisStore::decode_state(&key, &data, &task.unwrap_or_default(), version.unwrap_or(0))
                .unwrap();
            decoded += 1;
        }
    }
    decoded
}

/// The figure in docs/OPERATIONS.md ("Multi-agent rollout"):
/// `cargo nextest run -p rollout-controller -E 'binary(outcomes)' --run-ignored only --no-capture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; takes about half a minute"]
async fn a_check_reads_its_window_not_the_keyspace() {
    let redis = RedisServer::start();
    let mut conn = redis.connection_manager().await;
    let store = RedisStore::new(conn.clone(), "taskrouter");
    let now = SystemTime::now();
    let total = 10_000;
    for i in 0..total {
        // One task in ten finished in the window under the step's version.
        let (at, version) = if i % 10 == 0 {
            (now - Duration::from_secs(60), "v2")
        } else {
            (now - Duration::from_secs(86_400), "v1")
        };
        let mut s = record(&format!("T-{i}"), TaskStatus::Completed, version, at, at);
        if let Some(t) = s.task.as_mut() {
            t.description = "x".repeat(2000);
        }
        store.create(&s, &ProgressEvent::default()).await.unwrap();
    }
    let records = RedisRecords::new(conn.clone(), "taskrouter");
    let step = RecordQuery {
        policy_version: Some("v2".into()),
        ..RecordQuery::since(now - Duration::from_secs(3600))
    };
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let got = records.finished(&step).await.unwrap();
        let list = t.elapsed();
        let t = std::time::Instant::now();
        let scanned = scan_every_state(&mut conn).await;
        let scan = t.elapsed();
        println!(
            "{total} tasks, {} in the window: listing {:.0} ms, scanning {scanned} {:.0} ms",
            got.len(),
            list.as_secs_f64() * 1000.0,
            scan.as_secs_f64() * 1000.0
        );
        assert_eq!(got.len(), total / 10);
        assert!(list * 5 < scan, "listing {list:?} vs scanning {scan:?}");
    }
}
