//! The bare mirror of one repository under the workspace root: the shared object store
//! of its worktrees and the end that fetches from and pushes to the remote (its eviction
//! is in [`super::eviction`]).

use super::git::Git;
use super::porcelain;
use super::refname;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// File touched on every use of a mirror; its mtime orders eviction.
pub const LAST_USED: &str = "taskrouter-last-used";

/// Config of every mirror: fast status and index writes on large trees, parallel
/// checkout for restores, no automatic gc during an iteration.
const MIRROR_CONFIG: [(&str, &str); 8] = [
    ("feature.manyFiles", "true"),
    ("core.untrackedCache", "true"),
    ("index.skipHash", "true"),
    ("checkout.workers", "0"),
    ("gc.auto", "0"),
    ("core.logAllRefUpdates", "false"),
    ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"),
    ("push.default", "nothing"),
];

/// Loose objects beyond which a mirror is consolidated at a task's finish (git's own
/// `gc.auto` default): every iteration's commit adds a few.
pub const GC_LOOSE_OBJECTS: u32 = 6700;
/// Packs beyond which a mirror is consolidated at a task's finish (git's own
/// `gc.autoPackLimit` default): every fetch into a partial mirror adds one.
pub const GC_PACKS: u32 = 50;

/// Upper bound on the parallel fetches of one prefetch.
const MAX_PREFETCH_STREAMS: usize = 4;

/// The result of a compare-and-swap push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The remote ref now holds the pushed commit.
    Pushed,
    /// The remote ref did not hold the expected commit; nothing changed.
    Rejected,
}

/// One repository's bare mirror.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// The repository name.
    pub repo: String,
    /// Path of the bare repository.
    pub path: PathBuf,
}

impl Mirror {
    /// The mirror of `repo` under `root` (not created yet).
    pub fn at(root: &Path, repo: &str) -> Self {
        Self {
            repo: repo.to_string(),
            path: mirrors_dir(root).join(format!("{}.git", refname::encode(repo))),
        }
    }

    /// Creates the mirror if needed and points `origin` at `url`; marks it used. A new
    /// mirror with a `filter` is a partial clone of `origin` (its promisor remote): git
    /// fetches the objects it filtered out when something reads them. An existing
    /// mirror keeps what it was created as.
    pub async fn ensure(&self, git: &Git, url: &str, filter: Option<&str>) -> Result<()> {
        if !self.path.join("HEAD").is_file() {
            let parent = self.path.parent().unwrap_or(Path::new("/"));
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                Error::Workspace(format!("cannot create {}: {e}", parent.display()))
            })?;
            // Built under a temporary name and renamed: a crash leaves no half mirror.
            let tmp = self
                .path
                .with_extension(format!("tmp{}", std::process::id()));
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            git.run(
                parent,
                "git init",
                [
                    "init".as_ref(),
                    "--bare".as_ref(),
                    "--quiet".as_ref(),
                    tmp.as_os_str(),
                ],
            )
            .await?;
            for (key, value) in MIRROR_CONFIG {
                git.run(&tmp, "git config", ["config", key, value]).await?;
            }
            git.run(&tmp, "git config", ["config", "remote.origin.url", url])
                .await?;
            if let Some(filter) = filter {
                git.run(
                    &tmp,
                    "git config",
                    ["config", "remote.origin.promisor", "true"],
                )
                .await?;
                git.run(
                    &tmp,
                    "git config",
                    ["config", "remote.origin.partialclonefilter", filter],
                )
                .await?;
            }
            tokio::fs::rename(&tmp, &self.path).await.map_err(|e| {
                Error::Workspace(format!("cannot create {}: {e}", self.path.display()))
            })?;
        } else {
            let current = git
                .output(&self.path, ["config", "remote.origin.url"], None)
                .await?;
            if current.text() != url {
                git.run(
                    &self.path,
                    "git config",
                    ["config", "remote.origin.url", url],
                )
                .await?;
            }
        }
        self.touch();
        Ok(())
    }

    /// Records a use (for least-recently-used eviction).
    pub fn touch(&self) {
        let _ = std::fs::write(self.path.join(LAST_USED), b"");
    }

    /// Fetches `src` (a branch, tag or full ref on the remote) into `dst` and returns the
    /// commit it names; `None` when the remote has no such ref.
    pub async fn fetch(&self, git: &Git, src: &str, dst: &str) -> Result<Option<String>> {
        let refspec = format!("+{src}:{dst}");
        let out = git
            .output(
                &self.path,
                ["fetch", "--quiet", "--no-tags", "origin", refspec.as_str()],
                None,
            )
            .await?;
        if !out.ok() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("couldn't find remote ref") {
                return Ok(None);
            }
            return Err(Error::Workspace(format!(
                "fetching {src} of {}: {}",
                self.repo,
                out.error_summary()
            )));
        }
        let spec = format!("{dst}^{{commit}}");
        Ok(Some(
            git.run(
                &self.path,
                "git rev-parse",
                ["rev-parse", "--verify", &spec],
            )
            .await?,
        ))
    }

    /// The commit the remote's `branch` points at, `None` when it does not exist.
    pub async fn remote_tip(&self, git: &Git, branch: &str) -> Result<Option<String>> {
        let full = format!("refs/heads/{branch}");
        let out = git
            .run(
                &self.path,
                &format!("listing the remote of {}", self.repo),
                ["ls-remote", "origin", full.as_str()],
            )
            .await?;
        Ok(porcelain::ls_remote_tip(&out, &full))
    }

    /// In a partial mirror: fetches the missing blobs of `commit`'s tree in parallel
    /// batches (one `git fetch` each, up to the number of CPUs), so the checkout that
    /// follows reads them locally instead of fetching them in one serial batch, whose
    /// unpacking and hashing take one core. Best effort: a failed batch is logged and
    /// the checkout fetches what is still missing itself. Returns how many were missing.
    pub async fn prefetch_blobs(&self, git: &Git, commit: &str) -> usize {
        if !self.is_partial() {
            return 0;
        }
        // `--no-walk`: only this commit's tree, not the history; `--missing=print`
        // lists what is absent instead of fetching it one object at a time.
        let out = match git
            .output(
                &self.path,
                [
                    "rev-list",
                    "--objects",
                    "--no-walk",
                    "--missing=print",
                    commit,
                ],
                None,
            )
            .await
        {
            Ok(out) if out.ok() => out,
            Ok(out) => {
                tracing::debug!(repo = %self.repo, error = %out.error_summary(), "listing missing blobs failed");
                return 0;
            }
            Err(e) => {
                tracing::debug!(repo = %self.repo, error = %e, "listing missing blobs failed");
                return 0;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let missing = porcelain::missing_objects(&text);
        if missing.is_empty() {
            return 0;
        }
        let streams = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_PREFETCH_STREAMS)
            .min(missing.len());
        let per = missing.len().div_ceil(streams);
        let mut batches = tokio::task::JoinSet::new();
        for chunk in missing.chunks(per) {
            let input = chunk.join("\n") + "\n";
            let (git, path) = (git.clone(), self.path.clone());
            batches.spawn(async move {
                // What git runs for a lazy fetch: no negotiation, nothing but the ids.
                git.output(
                    &path,
                    [
                        "-c",
                        "fetch.negotiationAlgorithm=noop",
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--no-write-fetch-head",
                        "--recurse-submodules=no",
                        "--stdin",
                        "origin",
                    ],
                    Some(input.as_bytes()),
                )
                .await
            });
        }
        while let Some(done) = batches.join_next().await {
            let failure = match done {
                Ok(Ok(out)) if out.ok() => continue,
                Ok(Ok(out)) => out.error_summary(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(repo = %self.repo, error = %failure, "prefetching blobs failed; the checkout fetches them");
        }
        missing.len()
    }

    /// Whether the mirror is a partial clone: the packs fetched from a promisor remote
    /// carry a `.promisor` file.
    fn is_partial(&self) -> bool {
        std::fs::read_dir(self.path.join("objects/pack")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "promisor"))
        })
    }

    /// Consolidates the mirror when more than `loose` loose objects or `packs` packs have
    /// piled up (`git gc --auto`; object lookups slow down with every pack), else does
    /// nothing. Mirrors run with automatic gc off so that no iteration pays for it; the
    /// caller runs this between tasks, under the repository's lock.
    pub async fn maintain(&self, git: &Git, loose: u32, packs: u32) -> Result<()> {
        let loose = format!("gc.auto={loose}");
        let packs = format!("gc.autoPackLimit={packs}");
        git.run(
            &self.path,
            "git gc",
            [
                "-c",
                loose.as_str(),
                "-c",
                packs.as_str(),
                "-c",
                "gc.autoDetach=false",
                // Bitmaps serve fetches from this repository, which nothing does; and
                // a partial clone's pack lacks the closure a bitmap needs.
                "-c",
                "repack.writeBitmaps=false",
                "gc",
                "--auto",
                "--quiet",
            ],
        )
        .await?;
        Ok(())
    }

    /// Whether `commit` is in the local object store.
    pub async fn has_commit(&self, git: &Git, commit: &str) -> Result<bool> {
        let spec = format!("{commit}^{{commit}}");
        Ok(git
            .output(&self.path, ["cat-file", "-e", spec.as_str()], None)
            .await?
            .ok())
    }

    /// Sets the remote's `branch` to `commit` if it holds `expected` (`None`: if it does
    /// not exist): `git push --force-with-lease=<ref>:<expected>`.
    pub async fn push(
        &self,
        git: &Git,
        commit: &str,
        branch: &str,
        expected: Option<&str>,
    ) -> Result<Push> {
        let full = format!("refs/heads/{branch}");
        let lease = format!("--force-with-lease={full}:{}", expected.unwrap_or(""));
        let refspec = format!("{commit}:{full}");
        let out = git
            .output(
                &self.path,
                [
                    "push",
                    "--porcelain",
                    "--quiet",
                    lease.as_str(),
                    "origin",
                    refspec.as_str(),
                ],
                None,
            )
            .await?;
        if out.ok() {
            return Ok(Push::Pushed);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if porcelain::push_rejected(&stdout, &stderr) {
            Ok(Push::Rejected)
        } else {
            Err(Error::Workspace(format!(
                "pushing {branch} of {}: {}",
                self.repo,
                out.error_summary()
            )))
        }
    }
}

/// Whether any worktree of the mirror at `path` is registered (it is in use then).
pub fn usage_in_use(path: &Path) -> bool {
    registered_worktrees(path) > 0
}

/// How many worktrees of the mirror at `path` are registered (idle ones included).
pub fn registered_worktrees(path: &Path) -> usize {
    std::fs::read_dir(path.join("worktrees"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Directory holding every mirror under `root`.
pub fn mirrors_dir(root: &Path) -> PathBuf {
    root.join("mirrors")
}
