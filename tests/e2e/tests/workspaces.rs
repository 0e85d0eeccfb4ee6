//! Durable git workspaces end to end: real executor processes (each with its own
//! `--workspace-root`, standing for its own pod), a real redis-server, and bare git
//! repositories over file:// as the remotes.

mod common;

use common::Cluster;
use std::path::Path;
use std::time::Duration;
use taskrouter_proto::v1::{Complexity, SessionState, SubmitRequest, TaskStatus};
use test_support::GitRemotes;
use test_support::client::{get_with_iterations, task, wait_final_with_iterations};

const REPO: &str = "app";

fn flags<'a>(remotes: &'a str, root: &'a Path) -> Vec<String> {
    vec![
        "--concurrency".into(),
        "1".into(),
        "--workspace-root".into(),
        root.display().to_string(),
        "--git-remote-template".into(),
        remotes.into(),
    ]
}

async fn add(c: &mut Cluster, name: &str, flags: &[String], env: &[(&str, &str)]) -> usize {
    let saved = c.env.clone();
    c.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let i = c.add_executor(name, &refs).await;
    c.env = saved;
    i
}

async fn submit(c: &Cluster, i: usize, id: &str, iterations: u32, latency_ms: u32) {
    let t = task(
        id,
        "Fix a small bug",
        Complexity::Low,
        5.0,
        &[REPO],
        &[
            ("sim.iterations", &iterations.to_string()),
            ("sim.latency_ms", &latency_ms.to_string()),
        ],
    );
    c.client(i)
        .await
        .submit(SubmitRequest {
            task: Some(t),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn wait_for(c: &Cluster, i: usize, id: &str, check: impl Fn(&SessionState) -> bool) {
    let mut client = c.client(i).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = get_with_iterations(&mut client, id, 1000).await.state
            && check(&s)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out on {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expected_file(n: u32) -> String {
    (1..=n).map(|i| format!("agent iteration {i}\n")).collect()
}

/// Asserts what a user checks on the remote: one commit per iteration, trailers 1..n in
/// order, the file holding each iteration's line once, and the final state naming it.
fn assert_branch(remotes: &GitRemotes, s: &SessionState, id: &str, n: u32) {
    assert_eq!(
        TaskStatus::try_from(s.status).unwrap(),
        TaskStatus::Completed,
        "{}",
        s.last_error
    );
    assert_eq!(s.iteration_count, n);
    let branch = format!("taskrouter/{id}");
    let repo = &s.repos[0];
    assert_eq!(repo.repo, REPO);
    assert_eq!(repo.branch, branch);
    assert_eq!(
        remotes.tip(REPO, &branch).as_deref(),
        Some(repo.commit.as_str())
    );
    assert_eq!(
        remotes.iterations(REPO, &branch),
        (1..=n).collect::<Vec<_>>(),
        "exactly one commit per iteration, in order"
    );
    assert_eq!(
        remotes
            .show(REPO, &repo.commit, "taskrouter-agent.txt")
            .as_deref(),
        Some(expected_file(n).as_str())
    );
    let base = test_support::git(&remotes.path(REPO), &["rev-parse", "main"]);
    assert_eq!(repo.base_commit, base);
}

#[tokio::test]
async fn a_second_executor_with_another_workspace_root_continues_from_the_checkpointed_tree() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 50, 200);
    let template = remotes.template();
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = Cluster::start().await;
    let a = add(&mut c, "exec-a", &flags(&template, root_a.path()), &[]).await;
    submit(&c, a, "WS-RESUME", 6, 150).await;
    wait_for(&c, a, "WS-RESUME", |s| s.iteration_count >= 2).await;
    c.executors[a].process.kill9();
    let b = add(&mut c, "exec-b", &flags(&template, root_b.path()), &[]).await;
    let r =
        wait_final_with_iterations(&mut c.client(b).await, "WS-RESUME", Duration::from_secs(60))
            .await;
    let s = r.state.unwrap();
    assert_branch(&remotes, &s, "WS-RESUME", 6);
    // B restored from the remote into its own root; its worktrees are gone after the
    // finish, its mirror stays.
    assert!(root_b.path().join("mirrors/app.git").is_dir());
    assert!(!root_b.path().join("tasks/WS-RESUME").exists());
    assert!(!c.executors[b].process.log_contents().contains("hunter2"));
}

#[tokio::test]
async fn a_crash_between_push_and_checkpoint_and_random_kills_leave_one_commit_per_iteration() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 20, 100);
    let template = remotes.template();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start().await;
    // The failpoint kills exec-a with SIGKILL right after pushing iteration 3.
    let a = add(
        &mut c,
        "exec-a",
        &flags(&template, &root.path().join("a")),
        &[("TASKROUTER_TEST_FAILPOINT", "after-push:3")],
    )
    .await;
    submit(&c, a, "WS-CRASH", 8, 40).await;
    assert!(
        c.executors[a]
            .process
            .wait_exit(Duration::from_secs(60))
            .await
            .is_some(),
        "the failpoint fired"
    );
    // The remote is one commit ahead of the checkpoint.
    let branch = "taskrouter/WS-CRASH";
    assert_eq!(remotes.iterations(REPO, branch), vec![1, 2, 3]);
    let redis_state = {
        let b = add(&mut c, "exec-b", &["--concurrency".into(), "0".into()], &[]).await;
        get_with_iterations(&mut c.client(b).await, "WS-CRASH", 1000)
            .await
            .state
            .unwrap()
    };
    assert_eq!(redis_state.iteration_count, 2);

    // Executors now come and go at random moments; the last one is left to finish.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    println!("seed {seed}");
    for k in 0..3u64 {
        let i = add(
            &mut c,
            &format!("exec-k{k}"),
            &flags(&template, &root.path().join(format!("k{k}"))),
            &[],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100 + (seed >> (k * 8)) % 400)).await;
        c.executors[i].process.kill9();
    }
    let last = add(
        &mut c,
        "exec-z",
        &flags(&template, &root.path().join("z")),
        &[],
    )
    .await;
    let r = wait_final_with_iterations(
        &mut c.client(last).await,
        "WS-CRASH",
        Duration::from_secs(90),
    )
    .await;
    let s = r.state.unwrap();
    assert_branch(&remotes, &s, "WS-CRASH", 8);
    let numbers: Vec<u32> = r.iterations.iter().map(|x| x.iteration).collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_paused_workers_push_is_refused_and_changes_nothing() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 20, 100);
    let template = remotes.template();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start().await;
    // exec-a freezes (SIGSTOP, from inside) with iteration 2's answer in hand, right
    // before its commit and push: a paused pod at a known point.
    let a = add(
        &mut c,
        "exec-a",
        &flags(&template, &root.path().join("a")),
        &[("TASKROUTER_TEST_FAILPOINT", "stop-before-push:2")],
    )
    .await;
    submit(&c, a, "WS-STALE", 4, 50).await;
    let pid = c.executors[a].process.pid().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !is_stopped(&pid) {
        assert!(std::time::Instant::now() < deadline, "exec-a never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its lease (2 s) expires; exec-b takes the task over and finishes it.
    let b = add(
        &mut c,
        "exec-b",
        &flags(&template, &root.path().join("b")),
        &[],
    )
    .await;
    let r = wait_final_with_iterations(&mut c.client(b).await, "WS-STALE", Duration::from_secs(60))
        .await;
    let s = r.state.unwrap();
    let tip = remotes.tip(REPO, "taskrouter/WS-STALE");
    // exec-a wakes up with an iteration in hand: its push and its checkpoint lose.
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(cont.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = "checkpoint rejected for task WS-STALE: branch";
    while !c.executors[a].process.log_contents().contains(refused)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        remotes.tip(REPO, "taskrouter/WS-STALE"),
        tip,
        "the branch did not move"
    );
    assert_branch(&remotes, &s, "WS-STALE", 4);
    let after = get_with_iterations(&mut c.client(b).await, "WS-STALE", 1000)
        .await
        .state
        .unwrap();
    assert_eq!(after.version, s.version, "nor did the checkpoint");
    let log = c.executors[a].process.log_contents();
    assert!(
        log.contains(refused),
        "exec-a's push was refused by the compare-and-swap:\n{log}"
    );
}

/// Whether the process `pid` is stopped (state `T` in /proc/<pid>/stat).
fn is_stopped(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn credentials_in_the_remote_url_never_appear_in_logs_or_state() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start().await;
    // Nothing listens on port 9: every fetch fails and is reported.
    let template = "http://robot:hunter2@127.0.0.1:9/{repo}.git";
    let a = add(&mut c, "exec-a", &flags(template, root.path()), &[]).await;
    submit(&c, a, "WS-CREDS", 2, 0).await;
    wait_for(&c, a, "WS-CREDS", |s| !s.last_error.is_empty()).await;
    let s = get_with_iterations(&mut c.client(a).await, "WS-CREDS", 1000)
        .await
        .state
        .unwrap();
    assert!(s.last_error.contains("127.0.0.1:9"), "{}", s.last_error);
    assert!(!s.last_error.contains("hunter2"), "{}", s.last_error);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = c.executors[a].process.log_contents();
    assert!(logs.contains("workspace"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}

/// A team-path task: the router staffs exactly `implementer` and `security-reviewer`.
async fn submit_team(c: &Cluster, i: usize, id: &str, labels: &[(&str, &str)]) {
    let t = task(
        id,
        "Rotate the HIPAA database credentials of the patient API",
        Complexity::Medium,
        50.0,
        &[REPO],
        labels,
    );
    c.client(i)
        .await
        .submit(SubmitRequest {
            task: Some(t),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn lines(role: &str, n: u32) -> String {
    (1..=n).map(|i| format!("{role} iteration {i}\n")).collect()
}

#[tokio::test]
async fn the_team_path_merges_every_specialist_branch_and_resolves_a_conflicting_pair() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 20, 100);
    let template = remotes.template();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start().await;
    let a = add(&mut c, "exec-a", &flags(&template, root.path()), &[]).await;
    submit_team(&c, a, "WS-TEAM", &[]).await;
    submit_team(
        &c,
        a,
        "WS-CONFLICT",
        &[("sim.conflict_file", "CONFLICT.txt")],
    )
    .await;
    for id in ["WS-TEAM", "WS-CONFLICT"] {
        let r =
            wait_final_with_iterations(&mut c.client(a).await, id, Duration::from_secs(60)).await;
        let s = r.state.unwrap();
        assert_eq!(
            TaskStatus::try_from(s.status).unwrap(),
            TaskStatus::Completed,
            "{id}: {}",
            s.last_error
        );
        assert_eq!(
            s.path,
            taskrouter_proto::v1::ExecutionPath::MultiAgent as i32,
            "{id} stayed on the team path: {:?}",
            s.fallback
        );
        assert!(s.fallback.is_none(), "{id}: {:?}", s.fallback);
        let tip = &s.repos[0].commit;
        assert_eq!(
            remotes.tip(REPO, &format!("taskrouter/{id}")).as_ref(),
            Some(tip)
        );
        let parents = test_support::git(&remotes.path(REPO), &["log", "-1", "--format=%P", tip]);
        assert_eq!(
            parents.split(' ').count(),
            3,
            "{id}: one merge of both specialists"
        );
        for sp in &s.specialists {
            let branch = format!("taskrouter/{id}--{}", sp.role);
            assert_eq!(sp.repos[0].branch, branch);
            assert_eq!(remotes.iterations(REPO, &branch), vec![1, 2], "{branch}");
            assert_eq!(
                remotes.tip(REPO, &branch).as_ref(),
                Some(&sp.repos[0].commit)
            );
        }
        assert_eq!(
            remotes.show(REPO, tip, "taskrouter-lead.txt").as_deref(),
            Some("lead iteration 2\n")
        );
        if id == "WS-TEAM" {
            for role in ["implementer", "security-reviewer"] {
                assert_eq!(
                    remotes
                        .show(REPO, tip, &format!("taskrouter-{role}.txt"))
                        .as_deref(),
                    Some(lines(role, 2).as_str()),
                    "{role}'s work is on the task branch"
                );
            }
        } else {
            let merged = remotes.show(REPO, tip, "CONFLICT.txt").unwrap();
            assert!(
                !merged.contains("<<<<<<<") && !merged.contains(">>>>>>>"),
                "{merged}"
            );
            for role in ["implementer", "security-reviewer"] {
                assert!(merged.contains(&lines(role, 2)), "{role} kept:\n{merged}");
            }
        }
    }
}

#[tokio::test]
async fn an_unresolved_conflict_falls_back_to_the_single_path_from_the_task_branch() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 20, 100);
    let template = remotes.template();
    let root = tempfile::tempdir().unwrap();
    let mut c = Cluster::start().await;
    let a = add(&mut c, "exec-a", &flags(&template, root.path()), &[]).await;
    submit_team(
        &c,
        a,
        "WS-UNRESOLVED",
        &[
            ("sim.conflict_file", "CONFLICT.txt"),
            ("sim.resolve_conflicts", "false"),
        ],
    )
    .await;
    let r = wait_final_with_iterations(
        &mut c.client(a).await,
        "WS-UNRESOLVED",
        Duration::from_secs(60),
    )
    .await;
    let s = r.state.unwrap();
    assert_eq!(
        TaskStatus::try_from(s.status).unwrap(),
        TaskStatus::Completed,
        "{}",
        s.last_error
    );
    let fallback = s.fallback.clone().expect("fell back");
    assert!(
        fallback.detail.contains("CONFLICT.txt"),
        "{}",
        fallback.detail
    );
    let tip = &s.repos[0].commit;
    assert_eq!(
        remotes.iterations(REPO, "taskrouter/WS-UNRESOLVED"),
        vec![1, 2, 3, 4, 5],
        "only the single path's iterations are on the task branch"
    );
    assert_eq!(
        remotes.show(REPO, tip, "taskrouter-agent.txt").as_deref(),
        Some(lines("agent", 5).as_str())
    );
    assert_eq!(remotes.show(REPO, tip, "CONFLICT.txt"), None);
}

#[tokio::test]
async fn the_shell_example_agent_from_the_docs_edits_its_workspace() {
    let remotes = GitRemotes::new();
    remotes.create(REPO, 20, 100);
    let template = remotes.template();
    let root = tempfile::tempdir().unwrap();
    let agent =
        test_support::workspace_root().join("executor-service/tests/fixtures/workspace_agent.sh");
    let mut f = flags(&template, root.path());
    f.extend([
        "--agent".to_string(),
        "command".to_string(),
        "--agent-command".to_string(),
        agent.display().to_string(),
    ]);
    let mut c = Cluster::start().await;
    let a = add(&mut c, "exec-a", &f, &[]).await;
    submit(&c, a, "WS-SHELL", 3, 0).await;
    let r = wait_final_with_iterations(&mut c.client(a).await, "WS-SHELL", Duration::from_secs(60))
        .await;
    assert_branch(&remotes, &r.state.unwrap(), "WS-SHELL", 3);
}
