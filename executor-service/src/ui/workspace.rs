//! The task page's workspace section: the task's branch per repository with its base and
//! latest checkpointed commit, and on the team path each specialist's branches.

use super::html::esc;
use std::fmt::Write as _;
use taskrouter_proto::v1::{RepoBranch, SessionState, TaskStatus};

/// Commits are shown abbreviated (the full id is the cell's title).
const SHORT_COMMIT: usize = 12;

fn commit(c: &str) -> String {
    if c.is_empty() {
        return "-".into();
    }
    let short: String = c.chars().take(SHORT_COMMIT).collect();
    format!(r#"<code title="{}">{}</code>"#, esc(c), esc(&short))
}

fn rows(out: &mut String, owner: &str, repos: &[RepoBranch]) {
    for r in repos {
        let changed = if r.commit.is_empty() || r.commit == r.base_commit {
            "no change yet"
        } else {
            "changed"
        };
        let _ = write!(
            out,
            r#"<tr data-branch="{branch}"><td>{}</td><td>{}</td><td><code>{branch}</code></td><td>{}</td><td>{}</td><td>{changed}</td></tr>"#,
            esc(owner),
            esc(&r.repo),
            commit(&r.base_commit),
            commit(&r.commit),
            branch = esc(&r.branch),
        );
    }
}

/// The workspace section, or "" when the task has no branch.
pub fn branches(s: &SessionState) -> String {
    let team: usize = s.specialists.iter().map(|sp| sp.repos.len()).sum();
    if s.repos.is_empty() && team == 0 {
        return String::new();
    }
    let latest = if matches!(
        TaskStatus::try_from(s.status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    ) {
        "Final commit"
    } else {
        "Current commit"
    };
    let mut out = format!(
        r#"<section id="workspace"><h2>Workspace branches</h2><table><thead><tr><th>Of</th><th>Repository</th><th>Branch</th><th>Base commit</th><th>{latest}</th><th></th></tr></thead><tbody>"#
    );
    rows(&mut out, "task", &s.repos);
    for sp in &s.specialists {
        rows(&mut out, &format!("specialist {}", sp.role), &sp.repos);
    }
    out.push_str("</tbody></table></section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::SpecialistProgress;

    #[test]
    fn branches_of_the_task_and_its_specialists_are_listed_escaped() {
        let repo = |branch: &str, commit: &str| RepoBranch {
            repo: "org/app".into(),
            branch: branch.into(),
            base_commit: "a".repeat(40),
            commit: commit.into(),
        };
        let s = SessionState {
            status: TaskStatus::Completed as i32,
            repos: vec![repo("taskrouter/T-1", &"b".repeat(40))],
            specialists: vec![SpecialistProgress {
                role: "security<reviewer>".into(),
                repos: vec![repo("taskrouter/T-1--sec", &"a".repeat(40))],
                ..Default::default()
            }],
            ..Default::default()
        };
        let html = branches(&s);
        assert!(html.contains("Final commit"));
        assert!(html.contains(r#"<code>taskrouter/T-1</code>"#));
        assert!(html.contains(&format!(
            r#"<code title="{}">{}</code>"#,
            "b".repeat(40),
            "b".repeat(12)
        )));
        assert!(html.contains("specialist security&lt;reviewer&gt;"));
        assert!(html.contains("no change yet") && html.contains("changed"));
        assert_eq!(branches(&SessionState::default()), "");
    }
}
