//! Durable git workspaces: an agent's working tree is committed and pushed after every
//! iteration, before its SessionState checkpoint, and restored from the remote on any
//! replica.
//!
//! Layout under `--workspace-root`: `mirrors/<repo>.git` (a bare mirror per repository,
//! the object store of its worktrees), `tasks/<task>/<role>/<repo>` (a detached
//! worktree per task, role and repository; the agent's working directory is
//! `tasks/<task>/<role>`) and `pool/<repo>/<id>` (idle worktrees of finished tasks,
//! reused by the next task of the repository, see [`pool`]). Names are encoded as in
//! [`refname`].
//!
//! Exactly once: every push is a compare-and-swap on the remote branch
//! (`--force-with-lease=<ref>:<checkpointed commit>`), so a stale worker cannot move
//! it; a crash between push and checkpoint leaves the remote one commit ahead, which the
//! next worker recognises by its trailers and moves back ([`Workspaces::reconcile`]).

pub mod config;
pub mod eviction;
pub mod git;
pub mod mirror;
pub mod pool;
pub mod porcelain;
pub mod refname;
pub mod task;
pub mod trailers;
pub mod worktree;

pub use config::{WorkspaceArgs, WorkspaceConfig, check_fetch_filter};
pub use task::TaskWorkspace;
pub use trailers::Trailers;
pub use worktree::Merge;

use crate::error::{Error, Result};
use eviction::Evict;
use git::Git;
use mirror::{Mirror, Push};
use pool::Pool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use worktree::Worktree;

/// One repository's place in a task: what SessionState records per repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoHead {
    /// Repository name (as in the task).
    pub repo: String,
    /// The branch on the remote.
    pub branch: String,
    /// The commit the branch started from.
    pub base: String,
    /// The checkpointed commit (equal to `base` before the first change).
    pub commit: String,
}

/// What [`Workspaces::reconcile`] found on the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The remote branch holds the checkpointed commit.
    InStep,
    /// The branch did not exist and was created at the checkpointed commit.
    Created,
    /// The remote was one uncheckpointed commit ahead (a crash between push and
    /// checkpoint); it was moved back. The commit that was dropped.
    RolledBack(String),
}

/// The workspaces of this executor: git, the mirrors and the worktrees under one root.
#[derive(Debug)]
pub struct Workspaces {
    config: WorkspaceConfig,
    git: Git,
    /// One lock per mirror: fetches and worktree changes of a repository one at a time.
    locks: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Worktrees known to match their commit since this process committed there, so the
    /// next iteration needs no reset (which would re-scan the tree).
    clean: StdMutex<HashMap<PathBuf, String>>,
    /// Idle worktrees' sizes, measured once each (eviction).
    idle_sizes: Arc<StdMutex<eviction::IdleSizes>>,
}

impl Workspaces {
    /// Workspaces under `config.root`.
    pub fn new(config: WorkspaceConfig) -> Self {
        let git = Git::new(&config.git_program, config.git_timeout);
        Self {
            config,
            git,
            locks: StdMutex::new(HashMap::new()),
            clean: StdMutex::new(HashMap::new()),
            idle_sizes: Arc::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &WorkspaceConfig {
        &self.config
    }

    /// The base ref of a task: its `git.base` label, else `--git-base-ref`.
    pub fn base_ref<'a>(&'a self, labels: &'a HashMap<String, String>) -> &'a str {
        labels
            .get(config::BASE_LABEL)
            .map(String::as_str)
            .filter(|b| !b.is_empty())
            .unwrap_or(&self.config.base_ref)
    }

    /// The agent's working directory for (task, role): one sub-directory per repository.
    pub fn task_dir(&self, task_id: &str, role: &str) -> PathBuf {
        self.config
            .root
            .join("tasks")
            .join(refname::encode(task_id))
            .join(refname::encode(role))
    }

    /// The worktree directory of `repo` for (task, role).
    pub fn repo_dir(&self, task_id: &str, role: &str, repo: &str) -> PathBuf {
        self.task_dir(task_id, role).join(refname::encode(repo))
    }

    /// The task's branch.
    pub fn task_branch(&self, task_id: &str) -> String {
        refname::task_branch(&self.config.branch_prefix, task_id)
    }

    /// A specialist's branch.
    pub fn role_branch(&self, task_id: &str, role: &str) -> String {
        refname::role_branch(&self.config.branch_prefix, task_id, role)
    }

    fn mirror(&self, repo: &str) -> Mirror {
        Mirror::at(&self.config.root, repo)
    }

    fn lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(repo.to_string()).or_default().clone()
    }

    fn mark_clean(&self, path: PathBuf, commit: &str) {
        let mut clean = self.clean.lock().unwrap_or_else(|p| p.into_inner());
        clean.insert(path, commit.to_string());
    }

    fn take_clean(&self, path: &PathBuf) -> Option<String> {
        let mut clean = self.clean.lock().unwrap_or_else(|p| p.into_inner());
        clean.remove(path)
    }

    async fn ready_mirror(&self, repo: &str) -> Result<Mirror> {
        refname::check_repo_name(repo)
            .map_err(|e| Error::Workspace(format!("repository {repo:?}: {e}")))?;
        let mirror = self.mirror(repo);
        mirror
            .ensure(
                &self.git,
                &self.config.remote_url(repo),
                self.config.fetch_filter.as_deref(),
            )
            .await?;
        Ok(mirror)
    }

    /// The first run of a task: resolves each repository's base commit (fetching
    /// `base_ref`) and returns the heads to record, on the task's branch.
    pub async fn start(
        &self,
        task_id: &str,
        repos: &[String],
        base_ref: &str,
    ) -> Result<Vec<RepoHead>> {
        config::check_base_ref(base_ref).map_err(|e| Error::Workspace(format!("base ref: {e}")))?;
        refname::check_length("the task id", task_id).map_err(Error::Workspace)?;
        let mut heads = Vec::with_capacity(repos.len());
        for repo in repos {
            let lock = self.lock(repo);
            let _guard = lock.lock().await;
            let mirror = self.ready_mirror(repo).await?;
            let dst = format!("refs/taskrouter/base/{}", refname::encode(base_ref));
            let base = mirror
                .fetch(&self.git, base_ref, &dst)
                .await?
                .ok_or_else(|| {
                    Error::Workspace(format!("repository {repo}: the remote has no {base_ref}"))
                })?;
            heads.push(RepoHead {
                repo: repo.clone(),
                branch: self.task_branch(task_id),
                base: base.clone(),
                commit: base,
            });
        }
        Ok(heads)
    }

    /// The head of a specialist's branch, starting at the task branch's `task_head`.
    pub fn role_head(&self, task_id: &str, role: &str, task_head: &RepoHead) -> RepoHead {
        RepoHead {
            repo: task_head.repo.clone(),
            branch: self.role_branch(task_id, role),
            base: task_head.commit.clone(),
            commit: task_head.commit.clone(),
        }
    }

    /// Once per run (a new lease): makes the remote branch agree with the checkpointed
    /// `head`. Creates a missing branch; moves back a commit pushed by an earlier
    /// worker of this task with an older fence that crashed before its checkpoint.
    /// A branch moved by a newer worker is a stale write; one moved by anyone else fails.
    pub async fn reconcile(
        &self,
        task_id: &str,
        head: &RepoHead,
        fence: u64,
    ) -> Result<Reconciled> {
        let mirror = {
            let lock = self.lock(&head.repo);
            let _guard = lock.lock().await;
            let mirror = self.ready_mirror(&head.repo).await?;
            self.fetch_commit(&mirror, head).await?;
            mirror
        };
        let git = &self.git;
        let tip = mirror.remote_tip(git, &head.branch).await?;
        let Some(tip) = tip else {
            return match mirror.push(git, &head.commit, &head.branch, None).await? {
                Push::Pushed => Ok(Reconciled::Created),
                Push::Rejected => Err(self.stale(task_id)),
            };
        };
        if tip == head.commit {
            return Ok(Reconciled::InStep);
        }
        let moved = || Error::FailedPrecondition {
            task_id: task_id.to_string(),
            reason: format!(
                "branch {} of {} was moved outside taskrouter (it is not the checkpointed commit or one iteration past it)",
                head.branch, head.repo
            ),
        };
        let tracking = format!("refs/remotes/origin/{}", head.branch);
        let Some(fetched) = mirror.fetch(git, &head.branch, &tracking).await? else {
            return Err(moved());
        };
        let parent = git
            .output(
                &mirror.path,
                ["rev-parse", "--verify", "--quiet", &format!("{fetched}^1")],
                None,
            )
            .await?;
        if !parent.ok() || parent.text() != head.commit {
            return Err(moved());
        }
        let text = git
            .run(
                &mirror.path,
                "git log",
                [
                    "log",
                    "-1",
                    "--format=%(trailers:only,unfold)",
                    fetched.as_str(),
                ],
            )
            .await?;
        match Trailers::parse(&text) {
            Some(t) if t.task_id == task_id && t.fence < fence => {
                match mirror
                    .push(git, &head.commit, &head.branch, Some(&fetched))
                    .await?
                {
                    Push::Pushed => Ok(Reconciled::RolledBack(fetched)),
                    Push::Rejected => Err(self.stale(task_id)),
                }
            }
            Some(t) if t.task_id == task_id => Err(self.stale(task_id)),
            _ => Err(moved()),
        }
    }

    /// Makes sure the mirror holds `head.commit`, fetching the branch, then the base.
    async fn fetch_commit(&self, mirror: &Mirror, head: &RepoHead) -> Result<()> {
        if mirror.has_commit(&self.git, &head.commit).await? {
            return Ok(());
        }
        let tracking = format!("refs/remotes/origin/{}", head.branch);
        mirror.fetch(&self.git, &head.branch, &tracking).await?;
        if mirror.has_commit(&self.git, &head.commit).await? {
            return Ok(());
        }
        // Never pushed yet (or a specialist's branch not created yet): the base's ref.
        let out = self
            .git
            .output(
                &mirror.path,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "origin",
                    head.commit.as_str(),
                ],
                None,
            )
            .await?;
        if out.ok() && mirror.has_commit(&self.git, &head.commit).await? {
            return Ok(());
        }
        Err(Error::Workspace(format!(
            "repository {}: commit {} is not on the remote branch {}",
            head.repo, head.commit, head.branch
        )))
    }

    /// Before an agent call: a worktree for (task, role, repository) exactly at
    /// `head.commit`, restored from the remote if this replica has never seen it: an
    /// idle worktree of the repository when there is one (only the files that differ
    /// are rewritten), else a new checkout. Returns its directory.
    pub async fn ensure(&self, task_id: &str, role: &str, head: &RepoHead) -> Result<PathBuf> {
        let wt = Worktree::at(self.repo_dir(task_id, role, &head.repo));
        // Handed to the agent now: until the next commit it is not known to be clean.
        let known = self.take_clean(&wt.path);
        if known.as_deref() == Some(head.commit.as_str()) && wt.exists() {
            return Ok(wt.path);
        }
        let lock = self.lock(&head.repo);
        let _guard = lock.lock().await;
        let mirror = self.ready_mirror(&head.repo).await?;
        self.fetch_commit(&mirror, head).await?;
        if wt.exists() && wt.registered(&mirror).await && wt.head(&self.git).await.is_ok() {
            wt.reset_to(&self.git, &head.commit).await?;
            return Ok(wt.path);
        }
        if self.config.idle_worktrees > 0
            && Pool::at(&self.config.root, &head.repo)
                .take(&self.git, &mirror, &wt, &head.commit)
                .await?
        {
            return Ok(wt.path);
        }
        mirror.prefetch_blobs(&self.git, &head.commit).await;
        wt.create(&self.git, &mirror, &head.commit).await?;
        Ok(wt.path)
    }

    /// After the agent answered: stages what changed (`changed`: the paths the agent
    /// reports, relative to the repository; `None` stages everything), commits with the
    /// trailers and pushes with a compare-and-swap on `head.commit`. Returns the new
    /// commit, or `head.commit` when nothing changed (nothing is pushed then). A refused
    /// push is a stale write. `extra_parents` makes a merge commit (synthesis).
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        task_id: &str,
        role: &str,
        head: &RepoHead,
        trailers: &Trailers,
        output: &str,
        changed: Option<&[String]>,
        extra_parents: &[String],
    ) -> Result<String> {
        let wt = Worktree::at(self.repo_dir(task_id, role, &head.repo));
        let message = trailers.message(output);
        // The agent named what it changed: commit those paths without the index.
        let fast = match changed {
            Some(paths) if extra_parents.is_empty() => Some(
                wt.commit_paths(&self.git, &head.commit, paths, &message)
                    .await?,
            ),
            _ => None,
        };
        let committed = match fast {
            Some(Ok(done)) => done,
            fallback => {
                if fallback.is_some() {
                    // Earlier index-free commits left the index behind HEAD.
                    wt.refresh_index(&self.git).await?;
                }
                wt.stage(&self.git, changed).await?;
                wt.commit(&self.git, &head.commit, extra_parents, &message)
                    .await?
            }
        };
        let Some(commit) = committed else {
            self.mark_clean(wt.path, &head.commit);
            return Ok(head.commit.clone());
        };
        let mirror = self.mirror(&head.repo);
        match mirror
            .push(&self.git, &commit, &head.branch, Some(&head.commit))
            .await?
        {
            Push::Pushed => {
                self.mark_clean(wt.path, &commit);
                Ok(commit)
            }
            Push::Rejected => Err(self.stale(task_id)),
        }
    }

    /// Synthesis: merges the specialists' `commits` into the (task, role) worktree,
    /// which must be at the task branch's checkpoint. On a conflict the worktree holds
    /// the markers for the agent; see [`Workspaces::conclude_merge`].
    pub async fn merge(
        &self,
        task_id: &str,
        role: &str,
        head: &RepoHead,
        commits: &[String],
    ) -> Result<Merge> {
        let lock = self.lock(&head.repo);
        let mirror = {
            let _guard = lock.lock().await;
            self.ready_mirror(&head.repo).await?
        };
        for c in commits {
            if !mirror.has_commit(&self.git, c).await? {
                return Err(Error::Workspace(format!(
                    "repository {}: specialist commit {c} is not in the mirror",
                    head.repo
                )));
            }
        }
        let wt = Worktree::at(self.repo_dir(task_id, role, &head.repo));
        if !commits.is_empty() {
            wt.refresh_index(&self.git).await?;
        }
        wt.merge(&self.git, commits).await
    }

    /// After the agent resolved a conflicted merge: checks no markers are left in
    /// `paths`, concludes it and merges the `remaining` commits. A second conflict, or
    /// markers left, is an error (the caller falls back to the single path).
    pub async fn conclude_merge(
        &self,
        task_id: &str,
        role: &str,
        head: &RepoHead,
        paths: &[String],
        remaining: &[String],
    ) -> Result<()> {
        let wt = Worktree::at(self.repo_dir(task_id, role, &head.repo));
        wt.conclude_merge(&self.git, paths).await?;
        match wt.merge(&self.git, remaining).await? {
            Merge::Clean => Ok(()),
            Merge::Conflicted { paths, .. } => Err(Error::Workspace(format!(
                "a second merge conflict in {}",
                paths.join(", ")
            ))),
        }
    }

    /// The task is finished (or cancelled): its worktrees become idle worktrees of their
    /// repositories (up to `--workspace-idle-worktrees` each; the rest are removed), its
    /// branches stay on the remote, and what exceeds `--workspace-max-bytes` is evicted.
    pub async fn finish(&self, task_id: &str, repos: &[String]) -> Result<()> {
        let dir = self
            .config
            .root
            .join("tasks")
            .join(refname::encode(task_id));
        for repo in repos {
            let lock = self.lock(repo);
            let _guard = lock.lock().await;
            let mirror = self.mirror(repo);
            let pool = Pool::at(&self.config.root, repo);
            let Ok(roles) = std::fs::read_dir(&dir) else {
                continue;
            };
            for role in roles.flatten() {
                let wt = Worktree::at(role.path().join(refname::encode(repo)));
                if wt.exists() {
                    self.take_clean(&wt.path);
                    pool.park(&self.git, &mirror, &wt, self.config.idle_worktrees)
                        .await?;
                }
            }
            // Between tasks, under the lock: no iteration waits for it.
            if mirror.path.join("HEAD").is_file()
                && let Err(e) = mirror
                    .maintain(&self.git, mirror::GC_LOOSE_OBJECTS, mirror::GC_PACKS)
                    .await
            {
                tracing::warn!(error = %e, "consolidating a mirror failed");
            }
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        self.evict().await
    }

    /// Deletes idle worktrees, then least recently used mirrors without worktrees in
    /// use, until the rest fit in `--workspace-max-bytes`. What it removed is logged.
    pub async fn evict(&self) -> Result<()> {
        let root = self.config.root.clone();
        let max = self.config.max_bytes;
        let sizes = self.idle_sizes.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let mut known = sizes.lock().unwrap_or_else(|p| p.into_inner());
            eviction::plan(
                eviction::mirrors(&root),
                eviction::idle(&root, &mut known),
                max,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("eviction: {e}")))?;
        for item in plan {
            let (Evict::Idle(name, path) | Evict::Mirror(name, path)) = &item;
            // The lock of that repository: no fetch or worktree change meanwhile.
            let repo = refname::decode(name);
            let lock = repo.as_deref().map(|n| self.lock(n));
            let _guard = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            match item {
                Evict::Idle(..) => {
                    // Taken by a task since the plan was made: not idle any more.
                    if tokio::fs::symlink_metadata(path).await.is_err() {
                        continue;
                    }
                    let removed = match repo.as_deref() {
                        Some(r) => Worktree::at(path).remove(&self.git, &self.mirror(r)).await,
                        None => tokio::fs::remove_dir_all(path)
                            .await
                            .map_err(|e| Error::Workspace(e.to_string())),
                    };
                    match removed {
                        Ok(()) => tracing::info!("evicted an idle worktree"),
                        Err(e) => tracing::warn!(error = %e, "evicting an idle worktree failed"),
                    }
                }
                Evict::Mirror(..) => {
                    if mirror::usage_in_use(path) {
                        continue;
                    }
                    if let Err(e) = tokio::fs::remove_dir_all(path).await {
                        tracing::warn!(error = %e, "evicting a mirror failed");
                    } else {
                        tracing::info!("evicted a least recently used mirror");
                    }
                }
            }
        }
        Ok(())
    }

    fn stale(&self, task_id: &str) -> Error {
        Error::StaleWrite {
            task_id: task_id.to_string(),
            reason: "branch".into(),
        }
    }
}
