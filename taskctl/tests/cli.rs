//! The `taskctl` binary against real router and executor servers (in this process, on
//! 127.0.0.1, over a private redis-server): outputs and exit codes of every command.

mod common;

use common::{Services, taskctl};

const HIPAA: &str = "Rotate the HIPAA database credentials of the patient API";

#[tokio::test(flavor = "multi_thread")]
async fn route_prints_the_decision_and_every_reason() {
    let s = Services::start().await;
    let args = [
        "route",
        "--id",
        "R-1",
        "--description",
        HIPAA,
        "--complexity",
        "high",
        "--value",
        "500",
        "--repo",
        "acme/api",
        "--repo",
        "acme/web",
    ];
    let out = s.taskctl(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "decision:        multi-agent (ROUTING_DECISION_USE_MULTI_AGENT)",
        "HIGH_COMPLEXITY",
        "complexity is HIGH",
        "HIGH_VALUE",
        "COMPLIANCE_SENSITIVE",
        "CROSS_REPO",
        "rollout bucket:",
        "roles:           implementer, architect, reviewer, security-reviewer",
        "policy version:",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("patient API"), "{}", out.stdout);

    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let out = s.taskctl(&json_args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let a = out.json();
    assert_eq!(a["decision"], "ROUTING_DECISION_USE_MULTI_AGENT");
    let codes: Vec<&str> = a["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec![
            "REASON_CODE_HIGH_COMPLEXITY",
            "REASON_CODE_HIGH_VALUE",
            "REASON_CODE_COMPLIANCE_SENSITIVE",
            "REASON_CODE_CROSS_REPO"
        ]
    );
    assert!(a["reasons"][0]["message"].as_str().unwrap().len() > 5);
    assert!(a["rollout_bucket"].as_u64().unwrap() >= 1);
    assert!(!a["policy_version"].as_str().unwrap().is_empty());

    // A README typo at $10 stays single.
    let out = s
        .taskctl(&[
            "--json",
            "route",
            "--id",
            "R-2",
            "--description",
            "Fix typo in README",
            "--complexity",
            "low",
            "--value",
            "10",
        ])
        .await;
    assert_eq!(out.json()["decision"], "ROUTING_DECISION_USE_SINGLE_AGENT");
    assert_eq!(out.json()["reasons"][0]["code"], "REASON_CODE_SIMPLE_TASK");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_file_and_a_description_on_stdin() {
    let s = Services::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("task.yaml");
    std::fs::write(
        &yaml,
        "id: F-1\ncomplexity: medium\nvalue: 20\nrepos: [acme/api]\nlabels:\n  sim.iterations: 2\n",
    )
    .unwrap();
    let out = s
        .taskctl_with_stdin(
            &[
                "--json",
                "route",
                "--file",
                yaml.to_str().unwrap(),
                "--description-file",
                "-",
            ],
            Some("Deploy the billing service to production\n"),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["reasons"][0]["code"], "REASON_CODE_DEPLOYMENT");

    let json = dir.path().join("task.json");
    std::fs::write(&json, r#"{"id": "F-2", "complexity": "LOW", "valu": 3}"#).unwrap();
    let out = s
        .taskctl(&["route", "--file", json.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown field `valu`"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_shows_the_policy_in_force() {
    let s = Services::start().await;
    let out = s.taskctl(&["policy"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "version:",
        "source:          builtin",
        "value threshold: $100.00",
        "hipaa",
        "budgets:         single no limit, team no limit",
        "tenants:         default no limit/day",
        "approval:        none",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in\n{}",
            out.stdout
        );
    }
    let out = s.taskctl(&["policy", "--json"]).await;
    let p = out.json();
    assert_eq!(p["source"], "builtin");
    assert_eq!(p["policy"]["multi_agent_enabled"], true);
    assert_eq!(
        p["policy"]["fallback_decision"],
        "ROUTING_DECISION_USE_SINGLE_AGENT"
    );
    assert_eq!(p["policy"]["budgets"]["single_agent_usd"], 0.0);
    assert_eq!(p["policy"]["approval_rules"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_watch_and_get_round_trip() {
    let s = Services::start().await;
    let submit = [
        "--json",
        "submit",
        "--id",
        "S-1",
        "--description",
        HIPAA,
        "--complexity",
        "medium",
        "--value",
        "50",
        "--label",
        "sim.latency_ms=20",
    ];
    let out = s.taskctl(&submit).await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["created"], true);
    assert_eq!(doc["state"]["task_id"], "S-1");
    assert!(!out.stdout.contains("patient API"), "{}", out.stdout);

    // Idempotent per id.
    let out = s.taskctl(&submit).await;
    assert_eq!(out.json()["created"], false);

    // Not a terminal: plain lines, ending with the Finished event.
    let out = s.taskctl(&["watch", "S-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].ends_with("submitted"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("routed: multi-agent (COMPLIANCE_SENSITIVE)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("phase SPECIALISTS: implementer, security-reviewer"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(specialist security-reviewer #1)"),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("finished COMPLETED after 6 iteration(s)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("patient API"), "{}", out.stdout);

    // JSON events, one per line.
    let out = s.taskctl(&["--json", "watch", "S-1", "--after", "1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["sequence"], 2);
    assert_eq!(events[0]["kind"], "routed");
    assert_eq!(
        events[0]["routed"]["analysis"]["decision"],
        "ROUTING_DECISION_USE_MULTI_AGENT"
    );
    let last = events.last().unwrap();
    assert_eq!(last["finished"]["status"], "TASK_STATUS_COMPLETED");

    let out = s.taskctl(&["get", "S-1", "--iterations"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "status:          COMPLETED",
        &format!("description:     {} bytes", HIPAA.len()),
        "decision:        multi-agent (COMPLIANCE_SENSITIVE)",
        "iterations:      6 of at most 50",
        "iterations (6 most recent):",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("patient API"), "{}", out.stdout);

    let out = s
        .taskctl(&["--json", "get", "S-1", "--iterations", "--limit", "2"])
        .await;
    let doc = out.json();
    assert_eq!(doc["state"]["status"], "TASK_STATUS_COMPLETED");
    assert_eq!(doc["state"]["path"], "EXECUTION_PATH_MULTI_AGENT");
    assert_eq!(doc["state"]["task"]["description_bytes"], HIPAA.len());
    assert_eq!(doc["iterations"].as_array().unwrap().len(), 2);
    assert!(!out.stdout.contains("patient API"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_then_resume_and_failed_runs_exit_3() {
    let s = Services::start().await;
    let out = s
        .taskctl(&[
            "--json",
            "run",
            "--id",
            "RUN-1",
            "--description",
            "Fix typo in README",
            "--complexity",
            "low",
            "--value",
            "10",
            "--label",
            "sim.iterations=10",
            "--max-iterations",
            "2",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let r = out.json();
    assert_eq!(r["status"], "TASK_STATUS_IN_PROGRESS");
    assert_eq!(r["total_iterations"], 2);

    let out = s
        .taskctl(&["run", "--id", "RUN-1", "--resume", "--max-iterations", "10"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("status:          COMPLETED"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("iterations:      8 this run, 10 in total"),
        "{}",
        out.stdout
    );

    // Running a known id again without --resume is refused by the executor.
    let out = s
        .taskctl(&[
            "run",
            "--id",
            "RUN-1",
            "--description",
            "x",
            "--complexity",
            "low",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ALREADY_EXISTS"), "{}", out.stderr);

    // The agent fails every iteration: the task ends FAILED, exit code 3.
    let out = s
        .taskctl(&[
            "run",
            "--id",
            "RUN-2",
            "--description",
            "x",
            "--complexity",
            "low",
            "--label",
            "sim.fail_step=iteration",
            "--single-agent",
        ])
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout.contains("status:          FAILED"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("FORCED_SINGLE_AGENT"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_task_and_watch_exits_3() {
    let s = Services::start().await;
    let out = s
        .taskctl(&[
            "submit",
            "--id",
            "X-1",
            "--description",
            "slow",
            "--complexity",
            "low",
            "--label",
            "sim.iterations=200",
            "--label",
            "sim.latency_ms=50",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("submitted X-1"), "{}", out.stdout);
    let watcher = {
        let router = format!("http://{}", s.router);
        let executor = format!("http://{}", s.executor);
        tokio::spawn(async move {
            common::taskctl(&["--router", &router, "--executor", &executor, "watch", "X-1"]).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let out = s.taskctl(&["cancel", "X-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("cancel requested for X-1") || out.stdout.contains("X-1 cancelled"),
        "{}",
        out.stdout
    );
    let watched = watcher.await.unwrap();
    assert_eq!(watched.code, 3, "{watched:?}");
    assert!(
        watched.stdout.contains("finished CANCELLED"),
        "{}",
        watched.stdout
    );

    let out = s.taskctl(&["--json", "cancel", "X-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["status"], "TASK_STATUS_CANCELLED");
    // Watching a task that already ended replays it and exits with its status.
    let out = s.taskctl(&["watch", "X-1"]).await;
    assert_eq!(out.code, 3, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_and_usage_errors_have_clear_lines_and_codes() {
    let s = Services::start().await;
    let out = s.taskctl(&["get", "NOPE-1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr_lines(),
        vec!["error: executor Get failed: NOT_FOUND: task NOPE-1 not found"]
    );

    // INVALID_ARGUMENT: the code, then one line per field violation; exit 2.
    let out = s
        .taskctl(&["route", "--id", "BAD-1", "--value", "-5"])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    let lines = out.stderr_lines();
    assert!(
        lines[0].starts_with("error: router Route failed: INVALID_ARGUMENT"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"  field task.estimated_value_usd: must not be negative"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  field task.complexity:")),
        "{lines:?}"
    );

    for args in [
        vec!["route", "--complexity", "low"],
        vec!["route", "--id", "X", "--complexity", "extreme"],
        vec!["get"],
        vec!["--executor", "ftp://x", "get", "X"],
    ] {
        let out = s.taskctl(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_is_one_line_and_exit_1() {
    let port = test_support::free_port();
    let dead = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["--executor", dead.as_str(), "get", "X-1"],
        vec!["--executor", dead.as_str(), "watch", "X-1"],
        vec!["--executor", dead.as_str(), "--json", "cancel", "X-1"],
        vec![
            "--executor",
            dead.as_str(),
            "submit",
            "--id",
            "X",
            "--complexity",
            "low",
        ],
        vec!["--router", dead.as_str(), "policy"],
        vec![
            "--router",
            dead.as_str(),
            "route",
            "--id",
            "X",
            "--complexity",
            "low",
        ],
    ] {
        let out = taskctl(&args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        let service = if args[0] == "--router" {
            "router"
        } else {
            "executor"
        };
        assert_eq!(
            out.stderr_lines(),
            vec![format!(
                "error: cannot reach {service} at {dead}: connection refused"
            )],
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}
