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

    // Finish: the task's worktrees gone (two of them kept idle for reuse), branches kept.
    ws.finish(TASK, &["app".to_string()]).await.unwrap();
    assert!(!root.path().join("tasks/task-1").exists());
    assert!(remotes.tip("app", "taskrouter/task-1--backend").is_some());
    git(&root.path().join("mirrors/app.git"), &["worktree", "prune"]);
    let mut idle: Vec<String> = idle_entries(root.path(), "app")
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    idle.sort();
    let mut listed = registered(root.path(), "app");
    listed.sort();
    assert_eq!(idle.len(), 2);
    assert_eq!(listed, idle);
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
    assert!(
        idle_entries(root.path(), "two").is_empty()
            && idle_entries(root.path(), "three").is_empty(),
        "idle worktrees go first"
    );
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

/// Asserts that the worktree at `dir` is exactly `commit` as a new checkout would be:
/// HEAD there, the same files with the same contents (nothing more), a clean status
/// counting ignored files, no index entry flagged, no per-worktree ref or `ORIG_HEAD`.
fn assert_exactly_at(dir: &Path, commit: &str) {
    assert_eq!(git(dir, &["rev-parse", "HEAD"]), commit);
    assert_eq!(
        git(
            dir,
            &[
                "status",
                "--porcelain",
                "--ignored",
                "--untracked-files=all"
            ]
        ),
        ""
    );
    let flagged: Vec<String> = git(dir, &["ls-files", "-v"])
        .lines()
        .filter(|l| !l.starts_with("H "))
        .map(str::to_string)
        .collect();
    assert!(flagged.is_empty(), "{flagged:?}");
    assert_eq!(git(dir, &["for-each-ref", "refs/worktree/"]), "");
    // A new checkout records ORIG_HEAD at its own commit; a reused one has none.
    let orig = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", "ORIG_HEAD"])
        .current_dir(dir)
        .output()
        .unwrap();
    let orig = String::from_utf8_lossy(&orig.stdout).trim().to_string();
    assert!(orig.is_empty() || orig == commit, "ORIG_HEAD is {orig}");
    // Every file on disk, with the blob id of its content.
    let mut on_disk = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if d == dir && entry.file_name() == ".git" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                on_disk.push(rel);
            }
        }
    }
    on_disk.sort();
    let hashes = if on_disk.is_empty() {
        String::new()
    } else {
        let mut args = vec!["hash-object", "--no-filters", "--"];
        args.extend(on_disk.iter().map(String::as_str));
        git(dir, &args)
    };
    let actual: Vec<String> = on_disk
        .iter()
        .zip(hashes.lines())
        .map(|(p, h)| format!("{h} {p}"))
        .collect();
    let mut expected: Vec<String> = git(
        dir,
        &["ls-tree", "-r", "--format=%(objectname) %(path)", commit],
    )
    .lines()
    .map(str::to_string)
    .collect();
    expected.sort_by(|a, b| {
        a.split_once(' ')
            .unwrap()
            .1
            .cmp(b.split_once(' ').unwrap().1)
    });
    assert_eq!(
        actual,
        expected,
        "files in {} differ from {commit}",
        dir.display()
    );
}

/// Whether `a` and `b` are the same file (a file that `reset --hard` left in place is
/// still the one a hard link taken before points at; a new checkout writes new files).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// The device and inode of `path`: the same after a rename, new for a new checkout.
fn identity(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// The idle worktrees kept for `repo` under `root`.
fn idle_entries(root: &Path, repo: &str) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(root.join("pool").join(repo)) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The worktree paths git has registered in `repo`'s mirror under `root`.
fn registered(root: &Path, repo: &str) -> Vec<String> {
    git(
        &root.join("mirrors").join(format!("{repo}.git")),
        &["worktree", "list", "--porcelain"],
    )
    .lines()
    .filter_map(|l| l.strip_prefix("worktree "))
    .filter(|p| !p.ends_with(".git"))
    .map(str::to_string)
    .collect()
}

/// A head on `task`'s branch at `commit` (which the mirror already holds).
fn head_at(task: &str, commit: &str) -> RepoHead {
    RepoHead {
        repo: "app".into(),
        branch: format!("taskrouter/{task}"),
        base: commit.into(),
        commit: commit.into(),
    }
}

/// Everything a finished task left in its worktree — uncommitted edits, untracked and
/// ignored files, a nested repository, a per-worktree ref — is gone when the next task
/// gets that worktree from the pool, at the previous task's commit and at an older one.
#[tokio::test]
async fn an_idle_worktree_carries_nothing_of_its_previous_task_into_the_next() {
    let remotes = GitRemotes::new();
    let base = remotes.create("app", 20, 64);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let mut a = started(&ws, 1).await;
    let dir = ws.ensure(TASK, ROLE, &a).await.unwrap();
    std::fs::write(dir.join(".gitignore"), "build/\n").unwrap();
    a.commit = ws
        .commit(
            TASK,
            ROLE,
            &a,
            &trailers(1, ROLE, 1),
            "ignore build output",
            Some(&[".gitignore".to_string()]),
            &[],
        )
        .await
        .unwrap();
    let dir = ws.ensure(TASK, ROLE, &a).await.unwrap();
    // What task A leaves behind, none of it committed.
    std::fs::write(dir.join("dir0/file0.txt"), "secret of A\n").unwrap();
    std::fs::remove_file(dir.join("dir0/file1.txt")).unwrap();
    std::fs::write(dir.join("untracked-secret.txt"), "secret of A\n").unwrap();
    std::fs::create_dir_all(dir.join("build/obj")).unwrap();
    std::fs::write(dir.join("build/obj/secret.o"), "secret of A\n").unwrap();
    std::fs::create_dir_all(dir.join("newdir/deeper")).unwrap();
    std::fs::write(dir.join("newdir/deeper/secret"), "secret of A\n").unwrap();
    git(&dir, &["init", "--quiet", "nested"]);
    std::fs::write(dir.join("nested/secret"), "secret of A\n").unwrap();
    git(&dir, &["update-ref", "refs/worktree/secret-of-a", "HEAD"]);
    // A directory no task changes, to tell a reused worktree from a new checkout (a
    // file is no proof: `reset --hard` rewrites one whose index entry git marked racily
    // clean, i.e. written in the same clock tick as the index).
    let probe = identity(&dir.join("dir0"));
    ws.finish(TASK, &["app".to_string()]).await.unwrap();
    assert!(!root.path().join("tasks/task-1").exists());
    assert_eq!(idle_entries(root.path(), "app").len(), 1);

    // Task B restores at A's checkpoint: the same worktree, exactly at the commit.
    let b = ws
        .ensure("task-2", ROLE, &head_at("task-2", &a.commit))
        .await
        .unwrap();
    assert_eq!(identity(&b.join("dir0")), probe, "not reused");
    assert!(idle_entries(root.path(), "app").is_empty());
    assert_exactly_at(&b, &a.commit);
    assert!(!b.join("build").exists() && !b.join("nested").exists());
    assert_eq!(
        registered(root.path(), "app"),
        vec![b.display().to_string()]
    );

    // B leaves its own mess; task C restores at the base, before the .gitignore.
    std::fs::create_dir_all(b.join("build")).unwrap();
    std::fs::write(b.join("build/secret-of-b"), "x").unwrap();
    std::fs::write(b.join("README.md"), "secret of B\n").unwrap();
    ws.finish("task-2", &["app".to_string()]).await.unwrap();
    let c = ws
        .ensure("task-3", ROLE, &head_at("task-3", &base))
        .await
        .unwrap();
    assert_eq!(identity(&c.join("dir0")), probe, "not reused");
    assert_exactly_at(&c, &base);
    assert!(!c.join(".gitignore").exists());
}

/// `reset --hard` keeps the content of a file the index marks skip-worktree (and
/// status hides it, as it hides assume-unchanged ones): such a worktree is discarded and
/// the next task gets a new checkout.
#[tokio::test]
async fn index_flags_of_the_previous_task_never_carry_its_files_over() {
    let remotes = GitRemotes::new();
    let base = remotes.create("app", 20, 64);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    for (n, flag) in ["--skip-worktree", "--assume-unchanged"]
        .into_iter()
        .enumerate()
    {
        let task = format!("flagged-{n}");
        let dir = ws
            .ensure(&task, ROLE, &head_at(&task, &base))
            .await
            .unwrap();
        git(&dir, &["update-index", flag, "dir0/file3.txt"]);
        std::fs::write(dir.join("dir0/file3.txt"), "secret of A\n").unwrap();
        let probe = tempfile::tempdir().unwrap();
        let probe = probe.path().join("probe");
        std::fs::hard_link(dir.join("dir0/file5.txt"), &probe).unwrap();
        ws.finish(&task, &["app".to_string()]).await.unwrap();
        assert_eq!(idle_entries(root.path(), "app").len(), 1);

        let next = format!("next-{n}");
        let b = ws
            .ensure(&next, ROLE, &head_at(&next, &base))
            .await
            .unwrap();
        assert_exactly_at(&b, &base);
        assert!(
            !same_file(&b.join("dir0/file5.txt"), &probe),
            "{flag}: a flagged worktree was reused"
        );
        assert!(idle_entries(root.path(), "app").is_empty());
        assert_eq!(
            registered(root.path(), "app"),
            vec![b.display().to_string()]
        );
        ws.finish(&next, &["app".to_string()]).await.unwrap();
        // Start the next round with an empty pool.
        for e in idle_entries(root.path(), "app") {
            git(
                &root.path().join("mirrors/app.git"),
                &["worktree", "remove", "--force", e.to_str().unwrap()],
            );
        }
    }
}

/// A crash in the middle of `git worktree move` renames the directory without git's
/// bookkeeping; `git worktree prune` would then unregister it under a running task. Such
/// a directory is never used: not as an idle worktree, not as the task's own.
#[tokio::test]
async fn a_half_moved_worktree_is_never_used() {
    let remotes = GitRemotes::new();
    let base = remotes.create("app", 20, 64);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let mirror = root.path().join("mirrors/app.git");

    // A crash while parking: the directory is in the pool, git still has it under tasks/.
    let a = ws
        .ensure("task-a", ROLE, &head_at("task-a", &base))
        .await
        .unwrap();
    std::fs::write(a.join("untracked-secret.txt"), "secret of A\n").unwrap();
    std::fs::create_dir_all(root.path().join("pool/app")).unwrap();
    let half = root.path().join("pool/app/half");
    std::fs::rename(&a, &half).unwrap();
    let b = ws
        .ensure("task-b", ROLE, &head_at("task-b", &base))
        .await
        .unwrap();
    assert!(!half.exists(), "the half-moved entry is discarded");
    assert_exactly_at(&b, &base);
    git(&mirror, &["worktree", "prune"]);
    assert_eq!(
        registered(root.path(), "app"),
        vec![b.display().to_string()]
    );
    assert_exactly_at(&b, &base);

    // A crash while taking: the directory is at the task's path, git still has it in
    // the pool. The task's next ensure must not take it as its own.
    ws.finish("task-b", &["app".to_string()]).await.unwrap();
    let entry = idle_entries(root.path(), "app").remove(0);
    let c_dir = ws.repo_dir("task-c", ROLE, "app");
    std::fs::create_dir_all(c_dir.parent().unwrap()).unwrap();
    std::fs::rename(&entry, &c_dir).unwrap();
    let c = ws
        .ensure("task-c", ROLE, &head_at("task-c", &base))
        .await
        .unwrap();
    assert_eq!(c, c_dir);
    git(&mirror, &["worktree", "prune"]);
    assert_eq!(
        registered(root.path(), "app"),
        vec![c.display().to_string()]
    );
    assert_exactly_at(&c, &base);
}

/// The pool holds at most `idle_worktrees` per repository (0: none, as before), and
/// tasks restoring at the same time never share an idle worktree.
#[tokio::test]
async fn the_pool_is_bounded_and_concurrent_restores_never_share_an_entry() {
    let remotes = GitRemotes::new();
    let base = remotes.create("app", 20, 64);
    let repos = ["app".to_string()];

    let root = tempfile::tempdir().unwrap();
    let mut config = WorkspaceConfig::new(root.path(), remotes.template());
    config.idle_worktrees = 0;
    let ws = Workspaces::new(config);
    ws.ensure("t0", ROLE, &head_at("t0", &base)).await.unwrap();
    ws.finish("t0", &repos).await.unwrap();
    assert!(idle_entries(root.path(), "app").is_empty());
    assert!(registered(root.path(), "app").is_empty());

    let root = tempfile::tempdir().unwrap();
    let mut config = WorkspaceConfig::new(root.path(), remotes.template());
    config.idle_worktrees = 2;
    let ws = Workspaces::new(config);
    let tasks: Vec<String> = (0..4).map(|n| format!("t{n}")).collect();
    for t in &tasks[..3] {
        ws.ensure(t, ROLE, &head_at(t, &base)).await.unwrap();
    }
    for t in &tasks[..3] {
        ws.finish(t, &repos).await.unwrap();
    }
    assert_eq!(idle_entries(root.path(), "app").len(), 2);
    assert_eq!(registered(root.path(), "app").len(), 2);

    let heads: Vec<RepoHead> = tasks.iter().map(|t| head_at(t, &base)).collect();
    let dirs =
        futures::future::join_all(tasks.iter().zip(&heads).map(|(t, h)| ws.ensure(t, ROLE, h)))
            .await;
    let dirs: Vec<std::path::PathBuf> = dirs.into_iter().map(Result::unwrap).collect();
    assert!(idle_entries(root.path(), "app").is_empty());
    let mut admins = std::collections::HashSet::new();
    for d in &dirs {
        assert_exactly_at(d, &base);
        assert!(admins.insert(std::fs::read_to_string(d.join(".git")).unwrap()));
    }
    let mut listed = registered(root.path(), "app");
    listed.sort();
    let mut expected: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

/// The objects `rev-list --objects <revs> --missing=print` reports absent from the
/// mirror of `repo` under `root` (it never fetches them).
fn missing_in_mirror(root: &Path, repo: &str, revs: &[&str]) -> Vec<String> {
    let mut args = vec!["rev-list", "--objects", "--missing=print"];
    args.extend(revs);
    git(&root.join("mirrors").join(format!("{repo}.git")), &args)
        .lines()
        .filter_map(|l| l.strip_prefix('?'))
        .map(str::to_string)
        .collect()
}

/// A started task with `lines` iterations, each appending `line <n>` to notes.txt; its
/// head at the last one and the commit of each.
async fn with_notes(ws: &Workspaces, lines: u32) -> (RepoHead, Vec<String>) {
    let mut head = started(ws, 1).await;
    let mut commits = Vec::new();
    for n in 1..=lines {
        head.commit = iterate(ws, ROLE, &head, n, 1, "notes.txt", &format!("line {n}"))
            .await
            .unwrap();
        commits.push(head.commit.clone());
    }
    (head, commits)
}

/// A replica that has never seen the task fetches the history's commits and trees but
/// only the file contents of the commit it checks out (a blobless partial clone); an
/// older commit's contents arrive when a checkout needs them, and commits and pushes
/// from such a mirror work as from a full one.
#[tokio::test]
async fn a_cold_restore_fetches_only_the_contents_it_checks_out() {
    let remotes = GitRemotes::new();
    remotes.create("app", 20, 64);
    let a = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, a.path());
    let (head, commits) = with_notes(&ws, 2).await;
    // notes.txt after iteration 1: in the history, not in the checkpoint's tree.
    let old_notes = git(
        &remotes.path("app"),
        &["rev-parse", &format!("{}:notes.txt", commits[0])],
    );

    let b = tempfile::tempdir().unwrap();
    let other = workspaces(&remotes, b.path());
    assert_eq!(
        other.reconcile(TASK, &head, 2).await.unwrap(),
        Reconciled::InStep
    );
    let dir = other.ensure(TASK, ROLE, &head).await.unwrap();
    assert_exactly_at(&dir, &head.commit);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "line 1\nline 2\n"
    );
    assert_eq!(
        missing_in_mirror(b.path(), "app", &["--all"]),
        vec![old_notes.clone()],
        "only the history's file contents stay on the remote"
    );
    assert!(missing_in_mirror(b.path(), "app", &["--no-walk", &head.commit]).is_empty());

    // Commit and push from the partial mirror; a third replica restores it.
    let third = iterate(&other, ROLE, &head, 3, 2, "notes.txt", "line 3")
        .await
        .unwrap();
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2, 3]);
    assert_eq!(
        remotes.show("app", &third, "notes.txt").as_deref(),
        Some("line 1\nline 2\nline 3\n")
    );

    // The older commit checked out on the partial mirror: its contents are fetched then.
    let older = other
        .ensure("task-2", ROLE, &head_at("task-2", &commits[0]))
        .await
        .unwrap();
    assert_exactly_at(&older, &commits[0]);
    assert_eq!(
        std::fs::read_to_string(older.join("notes.txt")).unwrap(),
        "line 1\n"
    );
    assert!(missing_in_mirror(b.path(), "app", &["--all"]).is_empty());
}

/// A remote that does not serve partial clones (`uploadpack.allowFilter` off, git's
/// default for a self-hosted bare repository) is fetched in full and works as before;
/// so does a replica configured with `--workspace-fetch-filter none`.
#[tokio::test]
async fn without_filters_the_mirror_holds_the_whole_history() {
    let remotes = GitRemotes::new();
    remotes.create("app", 20, 64);
    let a = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, a.path());
    let (head, _) = with_notes(&ws, 2).await;
    git(
        &remotes.path("app"),
        &["config", "uploadpack.allowFilter", "false"],
    );
    let b = tempfile::tempdir().unwrap();
    let refused = workspaces(&remotes, b.path());
    let dir = refused.ensure(TASK, ROLE, &head).await.unwrap();
    assert_exactly_at(&dir, &head.commit);
    assert!(missing_in_mirror(b.path(), "app", &["--all"]).is_empty());

    git(
        &remotes.path("app"),
        &["config", "uploadpack.allowFilter", "true"],
    );
    let c = tempfile::tempdir().unwrap();
    let mut config = WorkspaceConfig::new(c.path(), remotes.template());
    config.fetch_filter = None;
    let full = Workspaces::new(config);
    let dir = full.ensure(TASK, ROLE, &head).await.unwrap();
    assert_exactly_at(&dir, &head.commit);
    assert!(missing_in_mirror(c.path(), "app", &["--all"]).is_empty());
    let third = iterate(&full, ROLE, &head, 3, 2, "notes.txt", "line 3")
        .await
        .unwrap();
    assert_eq!(
        remotes.show("app", &third, "notes.txt").as_deref(),
        Some("line 1\nline 2\nline 3\n")
    );
}

/// Loose objects and packs in a mirror, from `git count-objects -v`.
fn object_files(root: &Path, repo: &str) -> (u64, u64) {
    let out = git(
        &root.join("mirrors").join(format!("{repo}.git")),
        &["count-objects", "-v"],
    );
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (field("count:"), field("packs:"))
}

/// Each iteration's commit leaves loose objects in the mirror and each fetch into a
/// partial mirror a pack; past the thresholds, maintenance packs them, and the mirror
/// keeps working: the worktree, iterations committed and pushed, restores.
#[tokio::test]
async fn a_mirror_is_consolidated_once_objects_pile_up() {
    use executor_service::workspace::{git::Git, mirror::Mirror};
    let remotes = GitRemotes::new();
    remotes.create("app", 20, 64);
    let root = tempfile::tempdir().unwrap();
    let ws = workspaces(&remotes, root.path());
    let (mut head, _) = with_notes(&ws, 3).await;
    let (loose, packs) = object_files(root.path(), "app");
    assert!(
        loose >= 9,
        "three commits, trees and blobs are loose: {loose}"
    );

    let program = Git::new("git", std::time::Duration::from_secs(60));
    let mirror = Mirror::at(root.path(), "app");
    // Below the thresholds: nothing changes.
    mirror.maintain(&program, 10_000, 50).await.unwrap();
    assert_eq!(object_files(root.path(), "app"), (loose, packs));
    // Past them: everything is packed.
    mirror.maintain(&program, 1, 1).await.unwrap();
    let (after, _) = object_files(root.path(), "app");
    assert_eq!(after, 0, "no loose objects left");

    let dir = ws.ensure(TASK, ROLE, &head).await.unwrap();
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), head.commit);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
    head.commit = iterate(&ws, ROLE, &head, 4, 1, "notes.txt", "line 4")
        .await
        .unwrap();
    assert_eq!(remotes.iterations("app", &head.branch), vec![1, 2, 3, 4]);
    ws.finish(TASK, &["app".to_string()]).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let dir = workspaces(&remotes, other.path())
        .ensure(TASK, ROLE, &head)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "line 1\nline 2\nline 3\nline 4\n"
    );
}
