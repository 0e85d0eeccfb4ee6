//! A task's workspaces during one run (one lease): what the paths call around each
//! agent iteration. Heads are the `RepoBranch` records SessionState keeps.

use super::{Merge, Reconciled, RepoHead, Trailers, Workspaces, refname};
use crate::agent::{AgentWorkspace, WorkspaceRepo};
use crate::error::Result;
use std::collections::HashSet;
use std::sync::Arc;
use taskrouter_proto::v1::RepoBranch;

/// Environment variable of the test-only failpoints: `after-push:<n>` kills the process
/// with SIGKILL right after iteration `n`'s push, before its checkpoint;
/// `stop-before-push:<n>` freezes it with SIGSTOP right before iteration `n`'s commit
/// and push (a paused pod, at a known point). Inert unless set; operators never set it.
pub const FAILPOINT_ENV: &str = "TASKROUTER_TEST_FAILPOINT";

/// A conflicted merge left in a worktree for the synthesis agent.
#[derive(Clone, Debug)]
pub struct PendingMerge {
    /// The repository.
    pub repo: String,
    /// Conflicted paths, relative to the repository.
    pub paths: Vec<String>,
    /// Commits still to merge once it is resolved.
    pub remaining: Vec<String>,
}

/// The workspaces of one task for one run.
pub struct TaskWorkspace {
    ws: Arc<Workspaces>,
    task_id: String,
    fence: u64,
    /// (repo, branch) pairs already reconciled with the remote in this run.
    reconciled: tokio::sync::Mutex<HashSet<(String, String)>>,
}

fn head(b: &RepoBranch) -> RepoHead {
    RepoHead {
        repo: b.repo.clone(),
        branch: b.branch.clone(),
        base: b.base_commit.clone(),
        commit: b.commit.clone(),
    }
}

fn branch(h: RepoHead) -> RepoBranch {
    RepoBranch {
        repo: h.repo,
        branch: h.branch,
        base_commit: h.base,
        commit: h.commit,
    }
}

impl TaskWorkspace {
    /// The workspaces of `task_id` under a lease with fencing token `fence`.
    pub fn new(ws: Arc<Workspaces>, task_id: &str, fence: u64) -> Self {
        Self {
            ws,
            task_id: task_id.to_string(),
            fence,
            reconciled: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// The first run: each repository's base commit, on the task's branch.
    pub async fn start(&self, task: &taskrouter_proto::v1::Task) -> Result<Vec<RepoBranch>> {
        let base = self.ws.base_ref(&task.labels).to_string();
        let heads = self
            .ws
            .start(&self.task_id, &task.repositories, &base)
            .await?;
        Ok(heads.into_iter().map(branch).collect())
    }

    /// A specialist's heads: its own branch per repository, starting at the task's.
    pub fn role_heads(&self, role: &str, task_heads: &[RepoBranch]) -> Vec<RepoBranch> {
        task_heads
            .iter()
            .map(|b| branch(self.ws.role_head(&self.task_id, role, &head(b))))
            .collect()
    }

    /// Before an agent call: each branch reconciled with the remote (once per run) and
    /// a worktree exactly at its checkpointed commit. Returns the agent's view.
    pub async fn prepare(&self, role: &str, heads: &[RepoBranch]) -> Result<AgentWorkspace> {
        let mut repos = Vec::with_capacity(heads.len());
        for b in heads {
            let h = head(b);
            let key = (h.repo.clone(), h.branch.clone());
            if !self.reconciled.lock().await.contains(&key) {
                match self.ws.reconcile(&self.task_id, &h, self.fence).await? {
                    Reconciled::RolledBack(_) => tracing::warn!(
                        task_id = %self.task_id,
                        repo = %h.repo,
                        "remote branch was one uncheckpointed commit ahead; moved it back"
                    ),
                    Reconciled::Created | Reconciled::InStep => {}
                }
                self.reconciled.lock().await.insert(key);
            }
            let path = self.ws.ensure(&self.task_id, role, &h).await?;
            repos.push(WorkspaceRepo {
                repo: h.repo,
                path,
                branch: h.branch,
                base_commit: h.base,
                commit: h.commit,
            });
        }
        Ok(AgentWorkspace {
            dir: self.ws.task_dir(&self.task_id, role),
            repos,
        })
    }

    /// After the agent answered: commits and pushes each repository's changes and
    /// returns the new heads (to checkpoint next). `changed` are the agent's reported
    /// paths, relative to the workspace directory; `merged[i]` the specialist commits a
    /// synthesis merged into repository `i`.
    pub async fn record(
        &self,
        role: &str,
        iteration: u32,
        heads: &[RepoBranch],
        output: &str,
        changed: Option<&[String]>,
        merged: &[Vec<String>],
    ) -> Result<Vec<RepoBranch>> {
        let trailers = Trailers {
            task_id: self.task_id.clone(),
            iteration,
            role: role.to_string(),
            fence: self.fence,
        };
        failpoint(Failpoint::StopBeforePush, iteration);
        let mut out = Vec::with_capacity(heads.len());
        for (i, b) in heads.iter().enumerate() {
            let h = head(b);
            let dir = format!("{}/", refname::encode(&h.repo));
            let paths: Option<Vec<String>> = changed.map(|all| {
                all.iter()
                    .filter_map(|p| p.strip_prefix(&dir).map(str::to_string))
                    .collect()
            });
            let mut parents: Vec<String> = Vec::new();
            for c in merged.get(i).into_iter().flatten() {
                if *c != h.commit && !parents.contains(c) {
                    parents.push(c.clone());
                }
            }
            let commit = self
                .ws
                .commit(
                    &self.task_id,
                    role,
                    &h,
                    &trailers,
                    output,
                    paths.as_deref(),
                    &parents,
                )
                .await?;
            out.push(RepoBranch {
                commit,
                ..b.clone()
            });
        }
        failpoint(Failpoint::AfterPush, iteration);
        Ok(out)
    }

    /// Synthesis: merges each specialist's commits into the lead's worktrees (at the
    /// task's heads). Returns the merged commits per repository and the conflicts left
    /// for the agent.
    pub async fn merge(
        &self,
        role: &str,
        heads: &[RepoBranch],
        specialists: &[Vec<RepoBranch>],
    ) -> Result<(Vec<Vec<String>>, Vec<PendingMerge>)> {
        let mut merged = Vec::with_capacity(heads.len());
        let mut pending = Vec::new();
        for b in heads {
            let commits: Vec<String> = specialists
                .iter()
                .filter_map(|sp| sp.iter().find(|r| r.repo == b.repo))
                .map(|r| r.commit.clone())
                .filter(|c| *c != b.commit)
                .collect();
            match self
                .ws
                .merge(&self.task_id, role, &head(b), &commits)
                .await?
            {
                Merge::Clean => {}
                Merge::Conflicted {
                    paths, remaining, ..
                } => pending.push(PendingMerge {
                    repo: b.repo.clone(),
                    paths,
                    remaining,
                }),
            }
            merged.push(commits);
        }
        Ok((merged, pending))
    }

    /// The agent's context lines naming the conflicted paths (`conflict: <dir>/<path>`,
    /// relative to the workspace directory).
    pub fn conflict_lines(pending: &[PendingMerge]) -> Vec<String> {
        pending
            .iter()
            .flat_map(|p| {
                let dir = refname::encode(&p.repo);
                p.paths
                    .iter()
                    .map(move |path| format!("conflict: {dir}/{path}"))
            })
            .collect()
    }

    /// After the synthesis agent ran: every conflict must be resolved (no markers left).
    pub async fn conclude(
        &self,
        role: &str,
        heads: &[RepoBranch],
        pending: &[PendingMerge],
    ) -> Result<()> {
        for p in pending {
            let Some(b) = heads.iter().find(|b| b.repo == p.repo) else {
                continue;
            };
            self.ws
                .conclude_merge(&self.task_id, role, &head(b), &p.paths, &p.remaining)
                .await?;
        }
        Ok(())
    }
}

/// The test-only failpoints (see [`FAILPOINT_ENV`]).
#[derive(Clone, Copy)]
enum Failpoint {
    AfterPush,
    StopBeforePush,
}

/// Fires `which` at `iteration` when the test-only failpoint asks for it.
fn failpoint(which: Failpoint, iteration: u32) {
    let Ok(spec) = std::env::var(FAILPOINT_ENV) else {
        return;
    };
    let prefix = match which {
        Failpoint::AfterPush => "after-push:",
        Failpoint::StopBeforePush => "stop-before-push:",
    };
    let hit = spec
        .strip_prefix(prefix)
        .and_then(|n| n.trim().parse::<u32>().ok())
        == Some(iteration);
    if !hit {
        return;
    }
    tracing::warn!(iteration, failpoint = prefix, "test failpoint fired");
    #[cfg(unix)]
    {
        let signal = match which {
            Failpoint::AfterPush => libc::SIGKILL,
            Failpoint::StopBeforePush => libc::SIGSTOP,
        };
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), signal);
        }
    }
    if matches!(which, Failpoint::AfterPush) {
        std::process::abort();
    }
}

impl std::fmt::Debug for TaskWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWorkspace")
            .field("task_id", &self.task_id)
            .field("fence", &self.fence)
            .finish()
    }
}
