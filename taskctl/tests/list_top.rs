//! `taskctl list` and `taskctl top` against real services over a real Redis.

mod common;

use common::Services;
use std::time::Duration;

const SECRET: &str = "Tidy the footer of page 4711";

async fn submit(s: &Services, id: &str, extra: &[&str]) {
    let mut args = vec![
        "submit",
        "--id",
        id,
        "--description",
        SECRET,
        "--complexity",
        "low",
        "--value",
        "5",
    ];
    args.extend_from_slice(extra);
    let out = s.taskctl(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

async fn wait_status(s: &Services, id: &str, status: &str) {
    for _ in 0..300 {
        let out = s.taskctl(&["--json", "get", id]).await;
        if out.code == 0 && out.json()["state"]["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never reached {status}");
}

#[tokio::test]
async fn list_shows_a_table_json_every_filter_and_pages() {
    let s = Services::start().await;
    // One after the other, so the last one submitted is the last one updated (T-ACME-2
    // runs a team of 8 iterations and could otherwise finish after T-GLOBEX).
    let tasks: [(&str, &[&str]); 3] = [
        ("T-ACME-1", &["--label", "tenant=acme"]),
        (
            "T-ACME-2",
            &["--label", "tenant=acme", "--repo", "a/x", "--repo", "b/y"],
        ),
        ("T-GLOBEX", &["--label", "tenant=globex"]),
    ];
    for (id, extra) in tasks {
        submit(&s, id, extra).await;
        wait_status(&s, id, "TASK_STATUS_COMPLETED").await;
    }

    let out = s.taskctl(&["list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", out.stdout);
    // Last updated first.
    assert!(lines[1].starts_with("T-GLOBEX"), "{}", out.stdout);
    assert!(lines[1].contains("COMPLETED") && lines[1].contains("globex"));
    assert!(
        out.stdout
            .contains("3 tasks: PENDING 0, IN_PROGRESS 0, COMPLETED 3")
    );
    assert!(!out.stdout.contains("4711"), "{}", out.stdout);

    let json = |args: &'static [&'static str]| {
        let s = &s;
        async move {
            let mut all = vec!["--json", "list"];
            all.extend_from_slice(args);
            let out = s.taskctl(&all).await;
            assert_eq!(out.code, 0, "{args:?}: {out:?}");
            assert!(!out.stdout.contains("4711"));
            out.json()
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap().to_string())
            .collect()
    };
    let acme = json(&["--tenant", "acme"]).await;
    assert_eq!(ids(&acme), ["T-ACME-2", "T-ACME-1"]);
    assert_eq!(acme["counts"]["TASK_STATUS_COMPLETED"], 2);
    assert_eq!(acme["total"], 2);
    let cross = json(&["--reason", "cross-repo"]).await;
    assert_eq!(ids(&cross), ["T-ACME-2"]);
    assert_eq!(cross["tasks"][0]["path"], "EXECUTION_PATH_MULTI_AGENT");
    let single = json(&["--path", "single", "--status", "completed"]).await;
    assert_eq!(ids(&single), ["T-GLOBEX", "T-ACME-1"]);
    assert_eq!(json(&["--status", "failed"]).await["total"], 0);
    let policy = cross["tasks"][0]["policy_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!policy.is_empty());
    let out = s
        .taskctl(&["--json", "list", "--policy-version", &policy])
        .await;
    assert_eq!(out.json()["total"], 3);
    assert_eq!(
        json(&[
            "--created-after",
            "1h",
            "--updated-before",
            "2099-01-01T00:00:00Z"
        ])
        .await["total"],
        3
    );
    assert_eq!(json(&["--created-before", "1h"]).await["total"], 0);

    // One task per page, followed to the end.
    let paged = json(&["--limit", "1", "--all"]).await;
    assert_eq!(ids(&paged), ["T-GLOBEX", "T-ACME-2", "T-ACME-1"]);
    let first = json(&["--limit", "2"]).await;
    let token = first["next_page_token"].as_str().unwrap().to_string();
    let out = s
        .taskctl(&["--json", "list", "--limit", "2", "--page-token", &token])
        .await;
    assert_eq!(ids(&out.json()), ["T-ACME-1"]);

    // Bad input: named, exit 2.
    let out = s.taskctl(&["list", "--reason", "bogus"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--reason"), "{}", out.stderr);
    let out = s
        .taskctl(&["list", "--created-after", "1h", "--created-before", "2h"])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("created_before"), "{}", out.stderr);
    let out = s.taskctl(&["list", "--page-token", "abc"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("page_token"), "{}", out.stderr);
    let out = s.taskctl(&["list", "--limit", "5000"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("page_size"), "{}", out.stderr);
}

#[tokio::test]
async fn top_prints_plain_lines_when_not_a_terminal() {
    let s = Services::start().await;
    submit(
        &s,
        "TOP-1",
        &[
            "--label",
            "sim.iterations=200",
            "--label",
            "sim.latency_ms=100",
        ],
    )
    .await;
    wait_status(&s, "TOP-1", "TASK_STATUS_IN_PROGRESS").await;
    let out = s
        .taskctl(&["top", "--interval", "300ms", "--iterations", "3"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let counts: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" tasks: "))
        .collect();
    assert_eq!(counts.len(), 3, "{}", out.stdout);
    assert!(counts[0].contains("IN_PROGRESS 1"), "{}", out.stdout);
    assert!(out.stdout.contains("running TOP-1 iter "), "{}", out.stdout);
    assert!(
        !out.stdout.contains('\x1b'),
        "no escape codes off a terminal"
    );
    s.taskctl(&["cancel", "TOP-1"]).await;
}

/// On a terminal (tmux), `top` redraws in place and quits on `q`.
#[tokio::test]
async fn top_redraws_on_a_terminal_and_quits_on_q() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("tmux is required for this test (tests/run.sh installs it)");
    }
    let s = Services::start().await;
    submit(
        &s,
        "TOP-TTY",
        &[
            "--label",
            "sim.iterations=300",
            "--label",
            "sim.latency_ms=100",
        ],
    )
    .await;
    wait_status(&s, "TOP-TTY", "TASK_STATUS_IN_PROGRESS").await;
    let socket = format!("taskctl-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run tmux")
    };
    let command = format!(
        "{} --executor http://{} top --interval 200ms",
        env!("CARGO_BIN_EXE_taskctl"),
        s.executor
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "30",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let iteration_of = |screen: &str| -> Option<u32> {
        let line = screen.lines().find(|l| l.starts_with("TOP-TTY"))?;
        let iter = line.split_whitespace().nth(3)?;
        iter.split('/').next()?.parse().ok()
    };
    let mut first = None;
    let mut advanced = false;
    for _ in 0..100 {
        let now = screen();
        if let Some(n) = iteration_of(&now) {
            assert!(now.contains("taskctl top"), "{now}");
            assert!(now.contains("IN_PROGRESS 1"), "{now}");
            match first {
                None => first = Some(n),
                Some(f) if n > f => {
                    advanced = true;
                    break;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        advanced,
        "the iteration count never advanced in place:\n{}",
        screen()
    );
    tmux(&["send-keys", "-t", "top", "q"]);
    let mut gone = false;
    for _ in 0..50 {
        if !tmux(&["has-session", "-t", "top"]).status.success() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !gone {
        tmux(&["kill-server"]);
    }
    assert!(gone, "top did not quit on q");
    s.taskctl(&["cancel", "TOP-TTY"]).await;
}
