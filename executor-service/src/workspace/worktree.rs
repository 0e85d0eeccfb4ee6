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
