//! The workspace module against real git: bare repositories in a temporary directory
//! as remotes over file://, two workspace roots standing for two replicas.

mod common;

use executor_service::Error;
use executor_service::workspace::{
    Merge, Reconciled, RepoHead, Trailers, WorkspaceConfig, Workspaces,
};
use std::path::Path;
use test_support::{GitRemotes, git};

const TASK: &str = "task-1";
const ROLE: &str = "agent";

fn workspaces(remotes: &GitRemotes, root: &Path) -> Workspaces {
    Workspaces::new(WorkspaceConfig::new(root, remotes.template()))
}

fn trailers(iteration: u32, role: &str, fence: u64) -> Trailers {
    Trailers {
        task_id: TASK.into(),
        iteration,
        role: role.into(),
        fence,
    }
}

/// One iteration as the engine does it: ensure, edit, commit + push.
async fn iterate(
    ws: &Workspaces,
    role: &str,
    head: &RepoHead,
    iteration: u32,
    fence: u64,
    file: &str,
    line: &str,
) -> Result<String, Error> {
    let dir = ws.ensure(TASK, role, head).await?;
    let path = dir.join(file);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(line);
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    ws.commit(
        TASK,
        role,
        head,
        &trailers(iteration, role, fence),
        &format!("{line}\nsecond line"),
        Some(&[file.to_string()]),
        &[],
    )
    .await
}

async fn started(ws: &Workspaces, fence: u64) -> RepoHead {
    let mut heads = ws.start(TASK, &["app".to_string()], "main").await.unwrap();
    let head = heads.remove(0);
    assert_eq!(
        ws.reconcile(TASK, &head, fence).await.unwrap(),
        Reconciled::Created
    );
    head
}

#[tokio::test]
async fn iterations_are_committed_pushed_and_restored_on_another_root() {
    let remotes = GitRemotes::new();
    let base = remotes.create("app", 20, 64);
    let a = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, a.path());
    let mut head = started(&ws, 1).await;
    assert_eq!(head.base, base);
    assert_eq!(head.branch, "taskrouter/task-1");
    assert_eq!(
        remotes.tip("app", &head.branch).as_deref(),
        Some(base.as_str())
    );

    for n in 1..=3 {
        let commit = iterate(
            &ws,
            ROLE,
            &head,
            n,
            1,
            "notes.txt",
            &format!("agent iteration {n}"),
        )
        .await
        .unwrap();
        assert_ne!(commit, head.commit);
        head.commit = commit;
    }
    assert_eq!(remotes.tip("app", &head.branch), Some(head.commit.clone()));
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2, 3]);
    let subject = git(
        &remotes.path("app"),
        &["log", "-1", "--format=%s", &head.commit],
    );
    assert_eq!(subject, "agent iteration 3");

    // Nothing changed: same commit, nothing pushed.
    ws.ensure(TASK, ROLE, &head).await.unwrap();
    let same = ws
        .commit(
            TASK,
            ROLE,
            &head,
            &trailers(4, ROLE, 1),
            "noop",
            Some(&[]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(same, head.commit);
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2, 3]);

    // Another replica (another root, cold mirror) restores exactly the checkpoint,
    // even with an uncommitted leftover on the first one.
    let b = tempfile::tempdir().unwrap();
    let other = workspaces(&remotes, b.path());
    assert_eq!(
        other.reconcile(TASK, &head, 2).await.unwrap(),
        Reconciled::InStep
    );
    let dir = other.ensure(TASK, ROLE, &head).await.unwrap();
    let notes = std::fs::read_to_string(dir.join("notes.txt")).unwrap();
    assert_eq!(
        notes,
        "agent iteration 1\nagent iteration 2\nagent iteration 3\n"
    );
    assert!(dir.join("dir0/file0.txt").is_file());
    let commit = iterate(&other, ROLE, &head, 4, 2, "notes.txt", "agent iteration 4")
        .await
        .unwrap();
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2, 3, 4]);
    assert_eq!(
        remotes
            .show("app", &commit, "notes.txt")
            .unwrap()
            .lines()
            .count(),
        4
    );

    // The first replica, restarted at an older checkpoint with junk in its worktree,
    // resets exactly to the commit it is given.
    std::fs::write(a.path().join("tasks/task-1/agent/app/junk.txt"), "x").unwrap();
    let fresh = workspaces(&remotes, a.path());
    let dir = fresh.ensure(TASK, ROLE, &head).await.unwrap();
    assert!(!dir.join("junk.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[tokio::test]
async fn a_stale_push_is_refused_and_changes_nothing() {
    let remotes = GitRemotes::new();
    remotes.create("app", 5, 16);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let old = workspaces(&remotes, a.path());
    let new = workspaces(&remotes, b.path());
    let head = started(&old, 1).await;
    // The old worker prepares its iteration but stalls before pushing; a newer worker
    // takes over the same checkpoint and pushes first.
    old.ensure(TASK, ROLE, &head).await.unwrap();
    let newer = iterate(&new, ROLE, &head, 1, 2, "notes.txt", "new worker")
        .await
        .unwrap();
    let err = iterate(&old, ROLE, &head, 1, 1, "notes.txt", "old worker")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::StaleWrite { reason, .. } if reason == "branch"),
        "{err:?}"
    );
    assert_eq!(remotes.tip("app", &head.branch), Some(newer.clone()));
    assert_eq!(remotes.iterations("app", &head.branch), vec![1]);
    assert_eq!(
        remotes.show("app", &newer, "notes.txt").as_deref(),
        Some("new worker\n")
    );
}

#[tokio::test]
async fn a_commit_pushed_before_a_crash_is_rolled_back_once() {
    let remotes = GitRemotes::new();
    remotes.create("app", 5, 16);
    let a = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, a.path());
    let mut head = started(&ws, 1).await;
    head.commit = iterate(&ws, ROLE, &head, 1, 1, "notes.txt", "one")
        .await
        .unwrap();
    // Iteration 2 is pushed, then the worker dies before its checkpoint.
    let orphan = iterate(&ws, ROLE, &head, 2, 1, "notes.txt", "two")
        .await
        .unwrap();
    assert_eq!(remotes.tip("app", &head.branch), Some(orphan.clone()));

    // The next worker (fence 2) sees the remote one commit ahead and moves it back.
    let b = tempfile::tempdir().unwrap();
    let next = workspaces(&remotes, b.path());
    assert_eq!(
        next.reconcile(TASK, &head, 2).await.unwrap(),
        Reconciled::RolledBack(orphan)
    );
    assert_eq!(remotes.tip("app", &head.branch), Some(head.commit.clone()));
    let redone = iterate(&next, ROLE, &head, 2, 2, "notes.txt", "two again")
        .await
        .unwrap();
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2]);
    assert_eq!(
        remotes.show("app", &redone, "notes.txt").as_deref(),
        Some("one\ntwo again\n")
    );

    // A worker with an older fence than the commit ahead is the stale one.
    let mut at_two = head.clone();
    at_two.commit = redone.clone();
    let orphan = iterate(&next, ROLE, &at_two, 3, 5, "notes.txt", "three")
        .await
        .unwrap();
    let err = ws.reconcile(TASK, &at_two, 4).await.unwrap_err();
    assert!(matches!(err, Error::StaleWrite { .. }), "{err:?}");
    assert_eq!(remotes.tip("app", &head.branch), Some(orphan));

    // Two commits past the checkpoint is not ours to undo.
    let err = next.reconcile(TASK, &head, 9).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err:?}");
}

#[tokio::test]
async fn specialists_merge_and_a_conflict_is_reported_then_resolved() {
    let remotes = GitRemotes::new();
    remotes.create("app", 5, 16);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let task = started(&ws, 1).await;
    let lead = "lead";

    let mut heads = Vec::new();
    for (role, file, line) in [
        ("backend", "api.txt", "backend work"),
        ("frontend", "ui.txt", "frontend work"),
        ("docs", "api.txt", "docs disagree"),
    ] {
        let mut h = ws.role_head(TASK, role, &task);
        assert_eq!(h.branch, format!("taskrouter/task-1--{role}"));
        ws.reconcile(TASK, &h, 1).await.unwrap();
        h.commit = iterate(&ws, role, &h, 1, 1, file, line).await.unwrap();
        assert_eq!(remotes.iterations("app", &h.branch), vec![1]);
        heads.push(h);
    }
    let clean: Vec<String> = heads[..2].iter().map(|h| h.commit.clone()).collect();
    ws.ensure(TASK, lead, &task).await.unwrap();
    assert_eq!(
        ws.merge(TASK, lead, &task, &clean).await.unwrap(),
        Merge::Clean
    );
    let merged = ws
        .commit(
            TASK,
            lead,
            &task,
            &trailers(1, lead, 1),
            "synthesis",
            None,
            &clean,
        )
        .await
        .unwrap();
    assert_eq!(
        remotes.show("app", &merged, "api.txt").as_deref(),
        Some("backend work\n")
    );
    assert_eq!(
        remotes.show("app", &merged, "ui.txt").as_deref(),
        Some("frontend work\n")
    );
    let parents = git(&remotes.path("app"), &["log", "-1", "--format=%P", &merged]);
    assert_eq!(parents.split(' ').count(), 3, "{parents}");
    assert_eq!(remotes.iterations("app", &task.branch), vec![1]);

    // backend and docs both write api.txt: a conflict, with the path named.
    let both = vec![heads[0].commit.clone(), heads[2].commit.clone()];
    let mut from_base = task.clone();
    ws.ensure(TASK, "lead2", &from_base).await.unwrap();
    let outcome = ws.merge(TASK, "lead2", &from_base, &both).await.unwrap();
    let Merge::Conflicted {
        paths, remaining, ..
    } = outcome
    else {
        panic!("expected a conflict, got {outcome:?}");
    };
    assert_eq!(paths, vec!["api.txt".to_string()]);
    assert!(remaining.is_empty());
    // Markers left: refused.
    let err = ws
        .conclude_merge(TASK, "lead2", &from_base, &paths, &remaining)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("api.txt"), "{err}");
    // Resolved by the "agent": accepted and committed with both parents.
    let dir = ws.repo_dir(TASK, "lead2", "app");
    std::fs::write(dir.join("api.txt"), "backend work\ndocs agree\n").unwrap();
    ws.conclude_merge(TASK, "lead2", &from_base, &paths, &remaining)
        .await
        .unwrap();
    from_base.branch = "taskrouter/task-1--lead2".into();
    ws.reconcile(TASK, &from_base, 1).await.unwrap();
    let resolved = ws
        .commit(
            TASK,
            "lead2",
            &from_base,
            &trailers(1, "lead2", 1),
            "resolved",
            None,
            &both,
        )
        .await
        .unwrap();
    assert_eq!(
        remotes.show("app", &resolved, "api.txt").as_deref(),
        Some("backend work\ndocs agree\n")
    );

    // Finish: worktrees gone, branches kept.
    ws.finish(TASK, &["app".to_string()]).await.unwrap();
    assert!(!root.path().join("tasks/task-1").exists());
    assert!(remotes.tip("app", "taskrouter/task-1--backend").is_some());
    git(&root.path().join("mirrors/app.git"), &["worktree", "prune"]);
    let listed = git(&root.path().join("mirrors/app.git"), &["worktree", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[tokio::test]
async fn credentials_in_the_remote_url_never_appear_in_errors() {
    let root = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: the fetch fails, and its message must not leak.
    let ws = Workspaces::new(WorkspaceConfig::new(
        root.path(),
        "http://robot:hunter2@127.0.0.1:9/{repo}.git",
    ));
    let err = ws
        .start(TASK, &["app".to_string()], "main")
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("app"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!format!("{:?}", ws.config()).contains("hunter2"));
}

#[tokio::test]
async fn bad_repository_names_and_missing_bases_are_clear_errors() {
    let remotes = GitRemotes::new();
    remotes.create("app", 1, 8);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let err = ws
        .start(TASK, &["../etc".to_string()], "main")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"../etc\""), "{err}");
    let err = ws
        .start(TASK, &["app".to_string()], "no-such-branch")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-branch"), "{err}");
}

#[tokio::test]
async fn least_recently_used_mirrors_are_evicted_beyond_the_bound() {
    let remotes = GitRemotes::new();
    for name in ["one", "two", "three"] {
        remotes.create(name, 50, 4096);
    }
    let root = tempfile::tempdir().unwrap();
    let mut config = WorkspaceConfig::new(root.path(), remotes.template());
    config.max_bytes = 1;
    let ws = Workspaces::new(config);
    // `one` keeps a worktree (in use); `two` and `three` finish.
    let one = ws
        .start("t-one", &["one".to_string()], "main")
        .await
        .unwrap();
    ws.ensure("t-one", ROLE, &one[0]).await.unwrap();
    for (task, repo) in [("t-two", "two"), ("t-three", "three")] {
        let heads = ws.start(task, &[repo.to_string()], "main").await.unwrap();
        ws.ensure(task, ROLE, &heads[0]).await.unwrap();
        ws.finish(task, &[repo.to_string()]).await.unwrap();
    }
    let mirrors = root.path().join("mirrors");
    assert!(mirrors.join("one.git").is_dir(), "a mirror in use is kept");
    assert!(!mirrors.join("two.git").exists());
    assert!(!mirrors.join("three.git").exists());
}

/// What the agent reports is committed exactly, without the index: new, edited,
/// executable, symlinked and deleted files, awkward names; an ignored file is never
/// committed; and a later commit that does go through the index (a reported directory)
/// keeps every earlier change instead of building on a stale index.
#[tokio::test]
async fn reported_paths_are_committed_exactly_and_a_later_index_commit_keeps_them() {
    let remotes = GitRemotes::new();
    remotes.create("app", 20, 64);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let mut head = started(&ws, 1).await;
    let dir = ws.ensure(TASK, ROLE, &head).await.unwrap();
    let tracked = git(&dir, &["ls-files"]);
    let victim = tracked.lines().next().unwrap().to_string();
    let odd = "dir with space/q\"uote \u{e9}\nline.txt";
    std::fs::create_dir_all(dir.join("dir with space")).unwrap();
    std::fs::write(dir.join(odd), "odd\n").unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    std::os::unix::fs::symlink("run.sh", dir.join("link")).unwrap();
    std::fs::remove_file(dir.join(&victim)).unwrap();
    std::fs::write(dir.join(".gitignore"), "build/\n").unwrap();
    let reported: Vec<String> = [odd, "run.sh", "link", victim.as_str(), ".gitignore"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let first = ws
        .commit(
            TASK,
            ROLE,
            &head,
            &trailers(1, ROLE, 1),
            "one",
            Some(&reported),
            &[],
        )
        .await
        .unwrap();
    assert_ne!(first, head.commit);
    head.commit = first.clone();
    let tree = git(&dir, &["ls-tree", "-r", &first]);
    let mode_of = |name: &str| {
        tree.lines()
            .find(|l| l.ends_with(&format!("\t{name}")))
            .map(|l| l.split(' ').next().unwrap().to_string())
    };
    assert_eq!(mode_of("run.sh").as_deref(), Some("100755"), "{tree}");
    assert_eq!(mode_of("link").as_deref(), Some("120000"), "{tree}");
    assert_eq!(mode_of(&victim), None, "deleted: {tree}");
    assert_eq!(
        git(&dir, &["show", &format!("{first}:{odd}")]).trim_end(),
        "odd"
    );
    // Every other tracked file is still there.
    assert_eq!(
        git(&dir, &["ls-tree", "-r", "--name-only", &first])
            .lines()
            .count(),
        tracked.lines().count() - 1 + 4
    );
    assert_eq!(
        remotes.tip("app", &head.branch).as_deref(),
        Some(first.as_str())
    );

    // An ignored path is not committed (nothing else changed: no commit at all).
    std::fs::create_dir_all(dir.join("build")).unwrap();
    std::fs::write(dir.join("build/out.o"), "binary").unwrap();
    let same = ws
        .commit(
            TASK,
            ROLE,
            &head,
            &trailers(2, ROLE, 1),
            "two",
            Some(&["build/out.o".to_string()]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(same, first);

    // A reported directory takes the index route, which must not undo the first commit.
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/a.md"), "a\n").unwrap();
    let third = ws
        .commit(
            TASK,
            ROLE,
            &head,
            &trailers(3, ROLE, 1),
            "three",
            Some(&["docs".to_string()]),
            &[],
        )
        .await
        .unwrap();
    let files = git(&dir, &["ls-tree", "-r", "--name-only", &third]);
    assert!(files.lines().any(|l| l == "docs/a.md"), "{files}");
    assert!(files.lines().any(|l| l == "run.sh"), "{files}");
    assert!(!files.lines().any(|l| l == victim), "{files}");
    assert!(!files.lines().any(|l| l.starts_with("build/")), "{files}");
    assert_eq!(
        git(&dir, &["rev-parse", &format!("{third}^")]).trim(),
        first
    );
}

/// With workspaces on, a repository name git or the remote template cannot take is
/// refused at Submit and Run with the field named, and nothing is stored.
#[tokio::test]
async fn bad_repository_names_are_invalid_arguments_at_submit_and_store_nothing() {
    use taskrouter_proto::v1::{GetRequest, RunRequest, SubmitRequest};
    use tonic_types::StatusExt as _;
    let remotes = GitRemotes::new();
    let root = tempfile::tempdir().unwrap();
    let template = remotes.template();
    let mut h = common::Harness::start(|c| {
        c.workspace = Some(WorkspaceConfig::new(root.path(), template.clone()));
    })
    .await;
    for (repo, why) in [
        ("../escape", "'..'"),
        ("-upload-pack=evil", "'-'"),
        ("a b", "letters, digits"),
        ("", ""),
    ] {
        let mut task = test_support::client::sim_task(
            "WS-BAD-NAME",
            taskrouter_proto::v1::Complexity::Low,
            1,
            &[],
        );
        task.repositories = vec!["org/ok".into(), repo.into()];
        let e = h
            .client
            .submit(SubmitRequest {
                task: Some(task.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{repo:?}: {e:?}");
        let bad = e.get_details_bad_request().expect("field details");
        let fields: Vec<&str> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["task.repositories[1]"], "{repo:?}");
        assert!(
            bad.field_violations[0].description.contains(why),
            "{repo:?}: {bad:?}"
        );
        let e = h
            .client
            .run(RunRequest {
                task: Some(task),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{repo:?}");
    }
    let e = h
        .client
        .get(GetRequest {
            task_id: "WS-BAD-NAME".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    h.stop().await;
}
