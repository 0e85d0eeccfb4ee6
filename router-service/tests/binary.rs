//! The `router-service` binary: config checks, one-line config errors, serving with no
//! policy file, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{Complexity, RouteRequest, RoutingDecision, Task};

const BIN: &str = env!("CARGO_BIN_EXE_router-service");

/// The binary with a clean environment for its own variables, so the caller's shell
/// cannot change what a test sees.
fn router() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "ROUTER_LISTEN",
        "ROUTER_POLICY",
        "ROUTER_POLICY_POLL_INTERVAL",
        "TASKROUTER_METRICS_LISTEN",
        "TASKROUTER_LOG_FORMAT",
        "TASKROUTER_LOG_DECISIONS_EVERY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

#[test]
fn check_config_prints_the_policy_version_and_exits_zero() {
    let out = router().arg("--check-config").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let builtin = router_service::policy::policy_version(
        router_service::policy::BUILTIN_POLICY_TOML.as_bytes(),
    );
    assert_eq!(stdout, format!("config ok (policy version {builtin})\n"));

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.toml");
    let out = router()
        .args(["--check-config", "--policy", example])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_bad_policy_is_one_line_naming_the_key_and_exit_code_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[rules]\nvalue_threshold_usd = -1.0\n").unwrap();
    let out = router()
        .args(["--check-config", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "error: --policy {}: rules.value_threshold_usd must be finite and >= 0\n",
            path.display()
        )
    );
}

#[test]
fn a_bad_shadow_policy_is_one_line_naming_the_flag_and_exit_code_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candidate.toml");
    std::fs::write(&path, "[multi_agent]\nrollout_percent = 101\n").unwrap();
    let out = router()
        .args(["--check-config", "--shadow-policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("error: --shadow-policy {}: ", path.display()))
            && stderr.contains("multi_agent.rollout_percent")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_or_env_value_is_one_line_and_exit_code_two() {
    let out = router().args(["--listen", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");

    let out = router()
        .env("ROUTER_POLICY_POLL_INTERVAL", "often")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--policy-poll-interval"), "{stderr}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_route_and_exits_cleanly_on_sigterm() {
    let mut child = router()
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // The log line `router listening` carries the bound address.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("router listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let port: String = line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();

    let mut client = RouterClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let analysis = client
        .route(RouteRequest {
            task: Some(Task {
                id: "BIN-1".into(),
                description: "Deploy to production".into(),
                complexity: Complexity::Low as i32,
                estimated_value_usd: 1.0,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(analysis.decision, RoutingDecision::UseMultiAgent as i32);
    drop(client);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "router did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_lines_are_json_and_sampled_and_flushed_at_exit() {
    let mut child = router()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-decisions-every",
            "3",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("router listening") {
                let _ = tx.send(line.clone());
            }
            lines.push(line);
        }
        lines
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let port: String = line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let mut client = RouterClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    for i in 0..9 {
        client
            .route(RouteRequest {
                task: Some(Task {
                    id: format!("SAMPLED-{i}"),
                    description: "Fix typo".into(),
                    complexity: Complexity::Low as i32,
                    estimated_value_usd: 1.0,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    drop(client);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Everything logged before exit is on stderr: the writer thread was flushed.
    let lines = reader.join().unwrap();
    let decisions: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("task routed"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        decisions.len(),
        3,
        "one in three of 9 decisions: {lines:#?}"
    );
    for d in &decisions {
        assert_eq!(d["decision"], "single_agent", "{d}");
        assert!(
            d["task.id"].as_str().unwrap().starts_with("SAMPLED-"),
            "{d}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("router stopped")),
        "the last line before exit was lost: {lines:#?}"
    );
}
