//! The demo's git remotes: a temporary directory with one bare repository (a `main` with
//! one empty commit) per repository the scenarios name, reached over `file://`.

use executor_service::workspace::WorkspaceConfig;
use scenarios::Scenario;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Bare repositories and a workspace root, deleted when dropped.
pub struct LocalRemotes {
    dir: tempfile::TempDir,
}

impl LocalRemotes {
    /// The remotes for every repository `scenarios` name; `None` when git is not on
    /// `PATH` (the demo then runs without workspaces) or no scenario names one.
    pub fn create(scenarios: &[Scenario]) -> std::io::Result<Option<Self>> {
        let names: BTreeSet<&str> = scenarios
            .iter()
            .flat_map(|s| s.task.repositories.iter().map(String::as_str))
            .collect();
        if names.is_empty() || Command::new("git").arg("--version").output().is_err() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("taskrouter-demo")
            .tempdir()?;
        for name in names {
            init_remote(&dir.path().join("remotes").join(format!("{name}.git")))?;
        }
        Ok(Some(Self { dir }))
    }

    /// Workspaces over these remotes, with their root next to them.
    pub fn config(&self) -> WorkspaceConfig {
        WorkspaceConfig::new(
            self.dir.path().join("workspaces"),
            format!("file://{}/remotes/{{repo}}.git", self.dir.path().display()),
        )
    }
}

fn init_remote(path: &Path) -> std::io::Result<()> {
    let git = |args: &[&str]| -> std::io::Result<String> {
        let out = Command::new("git")
            .args(args)
            .env("GIT_AUTHOR_NAME", "taskrouter demo")
            .env("GIT_AUTHOR_EMAIL", "demo@localhost")
            .env("GIT_COMMITTER_NAME", "taskrouter demo")
            .env("GIT_COMMITTER_EMAIL", "demo@localhost")
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(std::io::Error::other(format!(
                "git {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    let p = path.to_string_lossy();
    git(&["init", "--quiet", "--bare", &p])?;
    // As a git host serves it: the executor's mirrors are partial clones.
    git(&["--git-dir", &p, "config", "uploadpack.allowFilter", "true"])?;
    // An empty tree (mktree of nothing): a first commit needs no working tree.
    let empty = git(&["--git-dir", &p, "mktree"])?;
    let commit = git(&["--git-dir", &p, "commit-tree", &empty, "-m", "demo base"])?;
    git(&["--git-dir", &p, "update-ref", "refs/heads/main", &commit])?;
    Ok(())
}
