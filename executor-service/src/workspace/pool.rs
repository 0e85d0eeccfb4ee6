//! Idle worktrees of one repository, kept after their task finished so that the next
//! task of that repository restores by rewriting only the files that differ instead of
//! checking out the whole tree (`--workspace-idle-worktrees` per repository).
//!
//! Entries live at `pool/<repo>/<id>` under the workspace root and move in and out with
//! `git worktree move` (a rename plus git's bookkeeping), under the repository's lock.
//! An entry is used only if git's bookkeeping names it back (a crash in the middle of a
//! move leaves one that does not: it is discarded), and only after
//! [`Worktree::scrub_to`] put it exactly at the task's commit and checked it.

use super::git::Git;
use super::mirror::Mirror;
use super::refname;
use super::worktree::Worktree;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Directory holding every repository's idle worktrees under `root`.
pub fn pools_dir(root: &Path) -> PathBuf {
    root.join("pool")
}

/// The idle worktrees of one repository.
#[derive(Clone, Debug)]
pub struct Pool {
    /// `pool/<repo>`.
    pub dir: PathBuf,
}

impl Pool {
    /// The pool of `repo` under `root`.
    pub fn at(root: &Path, repo: &str) -> Self {
        Self {
            dir: pools_dir(root).join(refname::encode(repo)),
        }
    }

    /// The entries now in the pool.
    pub async fn entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(mut dir) = tokio::fs::read_dir(&self.dir).await else {
            return out;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            out.push(entry.path());
        }
        out
    }

    /// Keeps `wt` (a finished task's worktree) as an idle entry if fewer than `max` are
    /// kept; otherwise, or if it cannot be moved, removes it. Returns whether it was kept.
    pub async fn park(
        &self,
        git: &Git,
        mirror: &Mirror,
        wt: &Worktree,
        max: usize,
    ) -> Result<bool> {
        if max > 0 && self.entries().await.len() < max && wt.registered(mirror).await {
            tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
                Error::Workspace(format!("cannot create {}: {e}", self.dir.display()))
            })?;
            let dst = self.dir.join(uuid::Uuid::new_v4().simple().to_string());
            if wt.move_to(git, mirror, &dst).await? {
                return Ok(true);
            }
        }
        wt.remove(git, mirror).await?;
        Ok(false)
    }

    /// Puts an idle entry at `dst` (a path holding no registered worktree) exactly at
    /// `commit`, which the mirror holds. `false` when there is none or the one tried
    /// failed its checks (it is discarded; the caller checks out a new worktree).
    pub async fn take(
        &self,
        git: &Git,
        mirror: &Mirror,
        dst: &Worktree,
        commit: &str,
    ) -> Result<bool> {
        let entries = self.entries().await;
        if entries.is_empty() {
            return Ok(false);
        }
        // Drops git's records of worktrees whose directory is gone, so that none of
        // them claims `dst`.
        git.run(&mirror.path, "git worktree prune", ["worktree", "prune"])
            .await?;
        for entry in entries {
            let idle = Worktree::at(entry);
            if !idle.registered(mirror).await {
                tracing::warn!("discarding an idle worktree git does not know at its path");
                discard(git, mirror, &idle).await;
                continue;
            }
            clear(&dst.path).await?;
            if !idle.move_to(git, mirror, &dst.path).await? {
                discard(git, mirror, &idle).await;
                continue;
            }
            let problem = match dst.scrub_to(git, commit).await {
                Ok(None) => return Ok(true),
                Ok(Some(reason)) => reason,
                Err(e) => e.to_string(),
            };
            tracing::warn!(reason = %problem, "discarding an idle worktree that did not come clean");
            discard(git, mirror, dst).await;
            return Ok(false);
        }
        Ok(false)
    }
}

/// Removes whatever is at `path` and makes its parent, so a worktree can move there.
async fn clear(path: &Path) -> Result<()> {
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        tokio::fs::remove_dir_all(path)
            .await
            .map_err(|e| Error::Workspace(format!("cannot clear {}: {e}", path.display())))?;
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::Workspace(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

/// Deletes an entry that must not be used, and git's bookkeeping of it; a failure is
/// logged (the entry fails its checks again next time).
async fn discard(git: &Git, mirror: &Mirror, wt: &Worktree) {
    if let Err(e) = wt.remove(git, mirror).await {
        tracing::warn!(error = %e, "removing an unusable idle worktree failed");
    }
}
