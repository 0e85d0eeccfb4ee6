//! `taskctl demo` end to end: the real binary starts both services in its process and
//! runs the plan's scenarios, in memory and against a real redis-server.

mod common;

use common::{Output, taskctl};
use serde_json::Value;
use std::time::{Duration, Instant};

/// (task id, decision, path, fallback cause) the plan expects; every one ends COMPLETED.
const EXPECTED: [(&str, &str, &str, Option<&str>); 7] = [
    (
        "TEST-BUG-001",
        "ROUTING_DECISION_USE_SINGLE_AGENT",
        "EXECUTION_PATH_SINGLE_AGENT",
        None,
    ),
    (
        "TEST-FEATURE-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_MULTI_AGENT",
        None,
    ),
    (
        "TEST-HIPAA-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_MULTI_AGENT",
        None,
    ),
    (
        "TEST-DEPLOY-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_MULTI_AGENT",
        None,
    ),
    (
        "TEST-XREPO-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_MULTI_AGENT",
        None,
    ),
    (
        "TEST-RESUME-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_MULTI_AGENT",
        None,
    ),
    (
        "TEST-FALLBACK-001",
        "ROUTING_DECISION_USE_MULTI_AGENT",
        "EXECUTION_PATH_SINGLE_AGENT",
        Some("FALLBACK_CAUSE_SYNTHESIS_FAILED"),
    ),
];

fn check_rows(out: &Output) {
    assert_eq!(out.code, 0, "demo failed:\n{}\n{}", out.stdout, out.stderr);
    let rows = out.json();
    let rows = rows.as_array().expect("a JSON array");
    // The plan's scenarios, then the two governance ones.
    assert_eq!(rows.len(), EXPECTED.len() + 2, "{rows:#?}");
    for (row, (id, decision, path, fallback)) in rows.iter().zip(EXPECTED) {
        assert_eq!(row["task_id"], id, "{row:#}");
        assert_eq!(row["decision"], decision, "{row:#}");
        assert_eq!(row["path"], path, "{row:#}");
        assert_eq!(row["status"], "TASK_STATUS_COMPLETED", "{row:#}");
        assert_eq!(
            row["fallback_cause"],
            fallback.map_or(Value::Null, Value::from),
            "{row:#}"
        );
        assert_eq!(row["ok"], true, "{row:#}");
        let trace = row["trace_id"].as_str().unwrap_or_default();
        assert!(
            trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
            "{row:#}"
        );
        assert!(!row["reasons"].as_array().unwrap().is_empty(), "{row:#}");
    }
    let by_id = |id: &str| rows.iter().find(|r| r["task_id"] == id).unwrap();
    assert_eq!(
        by_id("TEST-BUG-001")["reasons"][0],
        "REASON_CODE_SIMPLE_TASK"
    );
    assert!(
        by_id("TEST-HIPAA-001")["reasons"]
            .as_array()
            .unwrap()
            .contains(&Value::from("REASON_CODE_COMPLIANCE_SENSITIVE"))
    );
    let reset = by_id("TEST-RESUME-001");
    assert_eq!(
        reset["runs"][0]["status"], "TASK_STATUS_IN_PROGRESS",
        "{reset:#}"
    );
    assert_eq!(reset["runs"][0]["total_iterations"], 2, "{reset:#}");
    assert_eq!(
        reset["runs"][1]["status"], "TASK_STATUS_COMPLETED",
        "{reset:#}"
    );
    assert_eq!(reset["runs"][1]["iterations_this_run"], 8, "{reset:#}");
    assert_eq!(reset["runs"][1]["total_iterations"], 10, "{reset:#}");
    let gated = by_id("TEST-GATE-001");
    assert_eq!(gated["status"], "TASK_STATUS_COMPLETED", "{gated:#}");
    assert_eq!(gated["path"], "EXECUTION_PATH_MULTI_AGENT", "{gated:#}");
    assert_eq!(gated["ok"], true, "{gated:#}");
    let budget = by_id("TEST-BUDGET-001");
    assert_eq!(
        budget["status"], "TASK_STATUS_BUDGET_EXHAUSTED",
        "{budget:#}"
    );
    assert_eq!(budget["iterations"], 3, "{budget:#}");
    assert_eq!(budget["ok"], true, "{budget:#}");
    assert!(
        out.stderr
            .contains("9 of 9 scenarios ended as the plan expects"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_every_scenario_in_memory() {
    let t0 = Instant::now();
    let out = taskctl(&["demo", "--json"]).await;
    check_rows(&out);
    assert!(
        out.stderr
            .contains("no --redis-url: using the in-memory store (state is lost on exit)"),
        "{}",
        out.stderr
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_every_scenario_against_redis_twice() {
    let redis = test_support::RedisServer::start();
    let url = redis.url();
    // The second run must not trip over the first one's tasks.
    for _ in 0..2 {
        let out = taskctl(&["demo", "--json", "--redis-url", &url]).await;
        check_rows(&out);
        assert!(!out.stderr.contains("in-memory"), "{}", out.stderr);
        assert!(out.stderr.contains("redis store"), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_human_demo_prints_one_table() {
    let out = taskctl(&["demo"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("TASK "), "{}", out.stdout);
    for col in [
        "DECISION",
        "REASONS",
        "PATH",
        "ITERATIONS",
        "FALLBACK",
        "STATUS",
        "TRACE",
    ] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    let reset = lines
        .iter()
        .find(|l| l.starts_with("TEST-RESUME-001"))
        .unwrap();
    assert!(reset.contains("2+8=10"), "{reset}");
    let fallback = lines
        .iter()
        .find(|l| l.starts_with("TEST-FALLBACK-001"))
        .unwrap();
    assert!(fallback.contains("SYNTHESIS_FAILED"), "{fallback}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(" ok")).count(),
        9,
        "{}",
        out.stdout
    );
    // Descriptions never reach the output.
    assert!(!out.stdout.contains("Fix typo"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_with_an_unreachable_redis_fails_in_one_line() {
    let port = test_support::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let out = taskctl(&["demo", "--redis-url", &url, "--timeout", "3s"]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("error: cannot reach Redis"),
        "{}",
        lines[0]
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}
