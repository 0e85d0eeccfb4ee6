//! One checkout of a repository for one (task, role): a detached `git worktree` over the
//! repository's mirror. Commits are built from the index (`write-tree`, `commit-tree`)
//! after staging only what changed, so their cost does not grow with the tree.

use super::git::Git;
use super::mirror::Mirror;
use super::porcelain;
use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Lines that mark an unresolved conflict.
const MARKERS: [&str; 3] = ["<<<<<<< ", ">>>>>>> ", "======="];

/// What merging other branches into a worktree produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    /// Every branch merged cleanly.
    Clean,
    /// Merging `commit` conflicted; the worktree holds the markers in `paths` and the
    /// merge is in progress. `remaining` are the commits not merged yet.
    Conflicted {
        /// The commit whose merge conflicted.
        commit: String,
        /// Paths with conflicts, relative to the worktree.
        paths: Vec<String>,
        /// Commits still to merge after this one.
        remaining: Vec<String>,
    },
}

/// A worktree on disk.
#[derive(Clone, Debug)]
pub struct Worktree {
    /// Its directory.
    pub path: PathBuf,
}

impl Worktree {
    /// The worktree at `path` (it may not exist yet).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Whether `path` holds a registered worktree.
    pub fn exists(&self) -> bool {
        self.path.join(".git").is_file()
    }

    /// The worktree's administrative directory in the mirror (`<mirror>/worktrees/<id>`),
    /// as its `.git` file names it.
    pub async fn admin_dir(&self) -> Option<PathBuf> {
        let text = tokio::fs::read_to_string(self.path.join(".git"))
            .await
            .ok()?;
        let dir = text
            .strip_prefix("gitdir: ")?
            .trim_end_matches(['\n', '\r']);
        Some(PathBuf::from(dir))
    }

    /// Whether the worktree is registered in `mirror` at exactly this path: its `.git`
    /// file names an administrative directory of `mirror`, whose `gitdir` names this
    /// path back. A directory renamed without git's bookkeeping (a crash in the middle
    /// of a move) is not: `git worktree prune` would unregister it under a running task.
    pub async fn registered(&self, mirror: &Mirror) -> bool {
        let Some(admin) = self.admin_dir().await else {
            return false;
        };
        let Ok(admin) = tokio::fs::canonicalize(&admin).await else {
            return false;
        };
        let Ok(worktrees) = tokio::fs::canonicalize(mirror.path.join("worktrees")).await else {
            return false;
        };
        if admin.parent() != Some(worktrees.as_path()) {
            return false;
        }
        let Ok(back) = tokio::fs::read_to_string(admin.join("gitdir")).await else {
            return false;
        };
        let (Ok(back), Ok(own)) = (
            tokio::fs::canonicalize(back.trim_end_matches(['\n', '\r'])).await,
            tokio::fs::canonicalize(self.path.join(".git")).await,
        ) else {
            return false;
        };
        back == own
    }

    /// The commit HEAD points at.
    pub async fn head(&self, git: &Git) -> Result<String> {
        git.run(&self.path, "git rev-parse", ["rev-parse", "HEAD"])
            .await
    }

    /// Creates the worktree at `commit` (which the mirror must hold), replacing whatever
    /// is at the path.
    pub async fn create(&self, git: &Git, mirror: &Mirror, commit: &str) -> Result<()> {
        if tokio::fs::symlink_metadata(&self.path).await.is_ok() {
            tokio::fs::remove_dir_all(&self.path).await.map_err(|e| {
                Error::Workspace(format!("cannot clear {}: {e}", self.path.display()))
            })?;
        }
        git.run(&mirror.path, "git worktree prune", ["worktree", "prune"])
            .await?;
        if let Some(parent) = self.path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                Error::Workspace(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        git.run(
            &mirror.path,
            "git worktree add",
            [
                OsStr::new("worktree"),
                OsStr::new("add"),
                OsStr::new("--quiet"),
                OsStr::new("--detach"),
                self.path.as_os_str(),
                OsStr::new(commit),
            ],
        )
        .await?;
        Ok(())
    }

    /// Puts the worktree exactly at `commit`: tracked files reset, untracked files
    /// removed (ignored ones, such as build output, are kept), any merge abandoned.
    pub async fn reset_to(&self, git: &Git, commit: &str) -> Result<()> {
        git.run(
            &self.path,
            "git reset",
            ["reset", "--quiet", "--hard", commit],
        )
        .await?;
        git.run(&self.path, "git clean", ["clean", "-ffdq"]).await?;
        Ok(())
    }

    /// Moves the worktree to `dst` (which must not exist; its parent must) with
    /// `git worktree move`: a rename plus git's bookkeeping, whatever the tree's size.
    /// `false` when git refused (e.g. a worktree with submodules checked out).
    pub async fn move_to(&self, git: &Git, mirror: &Mirror, dst: &Path) -> Result<bool> {
        let out = git
            .output(
                &mirror.path,
                [
                    OsStr::new("worktree"),
                    OsStr::new("move"),
                    self.path.as_os_str(),
                    dst.as_os_str(),
                ],
                None,
            )
            .await?;
        if !out.ok() {
            tracing::debug!(error = %out.error_summary(), "git worktree move refused");
        }
        Ok(out.ok())
    }

    /// Puts a worktree another task used exactly at `commit`, as a new checkout would
    /// be, rewriting only the files that differ: tracked files reset, untracked and
    /// ignored files removed (nested repositories too), that task's per-worktree refs
    /// and `ORIG_HEAD` deleted. Then checks it: HEAD at `commit`, no index entry marked
    /// assume-unchanged or skip-worktree (`reset --hard` would keep such a file's
    /// content), a clean status counting ignored files, and nothing else left in its
    /// administrative directory (a rebase or bisect in progress). `Ok(Some(reason))`
    /// when a check failed: the caller discards the worktree.
    pub async fn scrub_to(&self, git: &Git, commit: &str) -> Result<Option<String>> {
        git.run(
            &self.path,
            "git reset",
            ["reset", "--quiet", "--hard", commit],
        )
        .await?;
        git.run(&self.path, "git clean", ["clean", "-ffdxq"])
            .await?;
        let refs = git
            .run(
                &self.path,
                "git for-each-ref",
                ["for-each-ref", "--format=%(refname)", "refs/worktree/"],
            )
            .await?;
        let mut deletions = String::from("delete ORIG_HEAD\n");
        for r in refs.lines().filter(|l| !l.is_empty()) {
            deletions.push_str(&format!("delete {r}\n"));
        }
        let out = git
            .output(
                &self.path,
                ["update-ref", "--stdin"],
                Some(deletions.as_bytes()),
            )
            .await?;
        if !out.ok() {
            return Ok(Some(format!("git update-ref: {}", out.error_summary())));
        }
        let head = self.head(git).await?;
        if head != commit {
            return Ok(Some(format!("HEAD is {head}, not {commit}")));
        }
        let entries = git
            .run(&self.path, "git ls-files", ["ls-files", "-v", "-z"])
            .await?;
        if let Some(e) = porcelain::nul_separated(&entries)
            .iter()
            .find(|e| !e.starts_with("H "))
        {
            return Ok(Some(format!("index entry flagged: {e:?}")));
        }
        let status = git
            .run(
                &self.path,
                "git status",
                [
                    "status",
                    "--porcelain",
                    "-z",
                    "--ignored",
                    "--untracked-files=all",
                ],
            )
            .await?;
        if !status.is_empty() {
            return Ok(Some("status not clean after reset and clean".into()));
        }
        let Some(admin) = self.admin_dir().await else {
            return Ok(Some("no administrative directory".into()));
        };
        if let Some(left) = admin_leftover(&admin) {
            return Ok(Some(format!("{left} left in the administrative directory")));
        }
        Ok(None)
    }

    /// Stages changes: only `paths` when given (the agent's report), else everything.
    /// A reported path git does not know falls back to staging everything.
    pub async fn stage(&self, git: &Git, paths: Option<&[String]>) -> Result<()> {
        match paths {
            Some([]) => Ok(()),
            Some(paths) => {
                let mut list = Vec::new();
                for p in paths {
                    check_relative(p)?;
                    list.extend_from_slice(p.as_bytes());
                    list.push(0);
                }
                let out = git
                    .output(
                        &self.path,
                        [
                            "--literal-pathspecs",
                            "add",
                            "-A",
                            "--pathspec-from-file=-",
                            "--pathspec-file-nul",
                        ],
                        Some(&list),
                    )
                    .await?;
                if out.ok() {
                    Ok(())
                } else {
                    self.stage_all(git).await
                }
            }
            None => self.stage_all(git).await,
        }
    }

    async fn stage_all(&self, git: &Git) -> Result<()> {
        git.run(&self.path, "git add", ["add", "-A"]).await?;
        Ok(())
    }

    /// Commits the index on top of `parent` (plus `extra_parents`, for merges) with
    /// `message` and moves HEAD there; `None` when the tree equals the parent's and
    /// there are no extra parents (nothing to commit).
    pub async fn commit(
        &self,
        git: &Git,
        parent: &str,
        extra_parents: &[String],
        message: &str,
    ) -> Result<Option<String>> {
        let tree = git
            .run(&self.path, "git write-tree", ["write-tree"])
            .await?;
        if extra_parents.is_empty() {
            let spec = format!("{parent}^{{tree}}");
            let parent_tree = git
                .run(&self.path, "git rev-parse", ["rev-parse", spec.as_str()])
                .await?;
            if parent_tree == tree {
                return Ok(None);
            }
        }
        let mut args: Vec<String> = vec!["commit-tree".into(), tree, "-p".into(), parent.into()];
        for p in extra_parents {
            args.push("-p".into());
            args.push(p.clone());
        }
        args.push("-F".into());
        args.push("-".into());
        let out = git
            .output(&self.path, &args, Some(message.as_bytes()))
            .await?;
        if !out.ok() {
            return Err(Error::Workspace(format!(
                "git commit-tree: {}",
                out.error_summary()
            )));
        }
        let commit = out.text();
        self.set_head(git, &commit).await?;
        Ok(Some(commit))
    }

    /// Commits exactly `paths` (the agent's report, relative to the worktree) on top of
    /// `parent` without the index: one `git fast-import` reads the parent's trees along
    /// those paths only, so the cost does not grow with the size of the tree (`git add`
    /// and `write-tree` read and rewrite the whole index). Moves HEAD there; the index is
    /// left behind (anything that needs it refreshes it first, see
    /// [`Worktree::refresh_index`]). `Ok(None)` when the tree equals the parent's;
    /// `Err(Fallback)` when a path cannot take this route (a directory, an ignored or
    /// unusual file, a large file): the caller stages the classic way then.
    pub async fn commit_paths(
        &self,
        git: &Git,
        parent: &str,
        paths: &[String],
        message: &str,
    ) -> Result<std::result::Result<Option<String>, Fallback>> {
        if paths.is_empty() {
            return Ok(Ok(None));
        }
        let mut changes = Vec::with_capacity(paths.len());
        for p in paths {
            check_relative(p)?;
            let full = self.path.join(p);
            let change = match tokio::fs::symlink_metadata(&full).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileChange::Deleted,
                Err(_) => return Ok(Err(Fallback)),
                Ok(m) if m.file_type().is_symlink() => match tokio::fs::read_link(&full).await {
                    Ok(target) => FileChange::Written {
                        mode: "120000",
                        bytes: target.as_os_str().as_encoded_bytes().to_vec(),
                    },
                    Err(_) => return Ok(Err(Fallback)),
                },
                Ok(m) if m.is_file() && m.len() <= FAST_COMMIT_MAX_FILE_BYTES => {
                    let mode = if is_executable(&m) {
                        "100755"
                    } else {
                        "100644"
                    };
                    match tokio::fs::read(&full).await {
                        Ok(bytes) => FileChange::Written { mode, bytes },
                        Err(_) => return Ok(Err(Fallback)),
                    }
                }
                Ok(_) => return Ok(Err(Fallback)),
            };
            changes.push((p.as_str(), change));
        }
        if self.any_ignored(git, paths).await? {
            return Ok(Err(Fallback));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut script: Vec<u8> = Vec::new();
        script.extend_from_slice(b"commit refs/worktree/taskrouter-commit\nmark :1\n");
        script.extend_from_slice(
            format!(
                "committer {} <{}> {now} +0000\n",
                super::git::COMMITTER_NAME,
                super::git::COMMITTER_EMAIL
            )
            .as_bytes(),
        );
        // fast-import takes the author from the committer line when none is given.
        script.extend_from_slice(format!("data {}\n", message.len()).as_bytes());
        script.extend_from_slice(message.as_bytes());
        script.extend_from_slice(format!("\nfrom {parent}\n").as_bytes());
        for (path, change) in &changes {
            match change {
                FileChange::Deleted => {
                    script.extend_from_slice(b"D ");
                    script.extend_from_slice(&quote_path(path));
                    script.push(b'\n');
                }
                FileChange::Written { mode, bytes } => {
                    script.extend_from_slice(format!("M {mode} inline ").as_bytes());
                    script.extend_from_slice(&quote_path(path));
                    script.extend_from_slice(format!("\ndata {}\n", bytes.len()).as_bytes());
                    script.extend_from_slice(bytes);
                    script.push(b'\n');
                }
            }
        }
        script.extend_from_slice(b"\nget-mark :1\ndone\n");
        let out = git
            .output(
                &self.path,
                ["fast-import", "--quiet", "--force", "--done"],
                Some(&script),
            )
            .await?;
        if !out.ok() {
            return Err(Error::Workspace(format!(
                "git fast-import: {}",
                out.error_summary()
            )));
        }
        let commit = out.text();
        let trees = git
            .run(
                &self.path,
                "git rev-parse",
                [
                    "rev-parse",
                    &format!("{commit}^{{tree}}"),
                    &format!("{parent}^{{tree}}"),
                ],
            )
            .await?;
        let mut lines = trees.lines();
        if lines.next().is_some_and(|a| Some(a) == lines.next()) {
            return Ok(Ok(None));
        }
        self.set_head(git, &commit).await?;
        Ok(Ok(Some(commit)))
    }

    /// Whether git ignores any of `paths` (such a path is never committed).
    async fn any_ignored(&self, git: &Git, paths: &[String]) -> Result<bool> {
        let mut list = Vec::new();
        for p in paths {
            list.extend_from_slice(p.as_bytes());
            list.push(0);
        }
        let out = git
            .output(
                &self.path,
                ["check-ignore", "--no-index", "-z", "--stdin"],
                Some(&list),
            )
            .await?;
        match out.code {
            // 0: some path is ignored; 1: none is.
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(Error::Workspace(format!(
                "git check-ignore: {}",
                out.error_summary()
            ))),
        }
    }

    /// Makes the index match HEAD again (after [`Worktree::commit_paths`] left it behind),
    /// for what reads it: merges.
    pub async fn refresh_index(&self, git: &Git) -> Result<()> {
        git.run(&self.path, "git reset", ["reset", "--quiet"])
            .await?;
        Ok(())
    }

    /// Points the detached HEAD at `commit` without touching files or the index.
    pub async fn set_head(&self, git: &Git, commit: &str) -> Result<()> {
        git.run(
            &self.path,
            "git update-ref",
            ["update-ref", "--no-deref", "HEAD", commit],
        )
        .await?;
        Ok(())
    }

    /// Merges `commits` one after the other (temporary merge commits; the caller makes
    /// the one checkpoint commit). Stops at the first conflict, leaving it in place.
    pub async fn merge(&self, git: &Git, commits: &[String]) -> Result<Merge> {
        for (i, commit) in commits.iter().enumerate() {
            let out = git
                .output(
                    &self.path,
                    [
                        "merge",
                        "--quiet",
                        "--no-ff",
                        "--no-edit",
                        "-m",
                        "merge",
                        commit.as_str(),
                    ],
                    None,
                )
                .await?;
            if out.ok() {
                continue;
            }
            let paths = self.conflicted(git).await?;
            if paths.is_empty() {
                return Err(Error::Workspace(format!(
                    "git merge: {}",
                    out.error_summary()
                )));
            }
            return Ok(Merge::Conflicted {
                commit: commit.clone(),
                paths,
                remaining: commits[i + 1..].to_vec(),
            });
        }
        Ok(Merge::Clean)
    }

    /// Paths with unmerged entries in the index.
    pub async fn conflicted(&self, git: &Git) -> Result<Vec<String>> {
        let out = git
            .run(
                &self.path,
                "git diff",
                ["diff", "--name-only", "--diff-filter=U", "-z"],
            )
            .await?;
        Ok(porcelain::nul_separated(&out))
    }

    /// Of `paths`, those that still hold conflict markers.
    pub async fn unresolved(&self, paths: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for p in paths {
            if let Ok(text) = tokio::fs::read(self.path.join(p)).await {
                let text = String::from_utf8_lossy(&text);
                if text
                    .lines()
                    .any(|l| MARKERS.iter().any(|m| l.starts_with(m)))
                {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// Concludes a conflicted merge the agent resolved (everything staged, a temporary
    /// merge commit). Errors name the paths that still hold markers.
    pub async fn conclude_merge(&self, git: &Git, paths: &[String]) -> Result<()> {
        let left = self.unresolved(paths).await;
        if !left.is_empty() {
            return Err(Error::Workspace(format!(
                "unresolved conflict markers in {}",
                left.join(", ")
            )));
        }
        self.stage_all(git).await?;
        git.run(
            &self.path,
            "git commit",
            [
                "commit",
                "--quiet",
                "--no-verify",
                "--no-edit",
                "-m",
                "merge",
            ],
        )
        .await?;
        Ok(())
    }

    /// Unregisters the worktree and deletes its directory.
    pub async fn remove(&self, git: &Git, mirror: &Mirror) -> Result<()> {
        let out = git
            .output(
                &mirror.path,
                [
                    OsStr::new("worktree"),
                    OsStr::new("remove"),
                    OsStr::new("--force"),
                    OsStr::new("--force"),
                    self.path.as_os_str(),
                ],
                None,
            )
            .await?;
        if !out.ok() {
            let _ = tokio::fs::remove_dir_all(&self.path).await;
            git.run(&mirror.path, "git worktree prune", ["worktree", "prune"])
                .await?;
        }
        Ok(())
    }
}

/// What a worktree's administrative directory holds after [`Worktree::scrub_to`]; a
/// `refs` directory may stay, but without files.
const ADMIN_FILES: [&str; 4] = ["HEAD", "commondir", "gitdir", "index"];

/// The first entry of `admin` that a fresh checkout would not have, if any.
fn admin_leftover(admin: &Path) -> Option<String> {
    let Ok(entries) = std::fs::read_dir(admin) else {
        return Some("an unreadable directory".into());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ADMIN_FILES.contains(&name.as_str()) {
            continue;
        }
        if name == "refs" && !holds_files(&entry.path()) {
            continue;
        }
        return Some(name);
    }
    None
}

/// Whether `dir` or any directory below it holds anything but directories.
fn holds_files(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return true;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                _ => return true,
            }
        }
    }
    false
}

/// Largest file [`Worktree::commit_paths`] reads into memory; a larger one is staged the
/// classic way.
const FAST_COMMIT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why [`Worktree::commit_paths`] could not commit: stage and commit the classic way.
#[derive(Debug, PartialEq, Eq)]
pub struct Fallback;

/// One reported path's new content.
enum FileChange {
    Deleted,
    Written { mode: &'static str, bytes: Vec<u8> },
}

#[cfg(unix)]
fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

/// A path as fast-import reads it: C-style quoted, so spaces, quotes, newlines and
/// non-ASCII bytes survive.
fn quote_path(p: &str) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in p.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
        }
    }
    out.push(b'"');
    out
}

/// A path an agent reports must stay inside its worktree.
fn check_relative(p: &str) -> Result<()> {
    let path = Path::new(p);
    let inside = !p.is_empty()
        && path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if inside {
        Ok(())
    } else {
        Err(Error::AgentFailed(format!(
            "changed path {p:?} is not a relative path inside the repository"
        )))
    }
}
