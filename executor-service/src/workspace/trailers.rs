//! Commit messages of checkpointed iterations and the trailers that identify them.

/// Longest subject line taken from an agent's output, in characters.
pub const MAX_SUBJECT_CHARS: usize = 120;

/// Trailer naming the task.
pub const TASK: &str = "Taskrouter-Task";
/// Trailer naming the iteration number.
pub const ITERATION: &str = "Taskrouter-Iteration";
/// Trailer naming the role.
pub const ROLE: &str = "Taskrouter-Role";
/// Trailer carrying the fencing token of the lease that wrote the commit.
pub const FENCE: &str = "Taskrouter-Fence";

/// What a checkpoint commit says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Trailers {
    /// Task id.
    pub task_id: String,
    /// Iteration number (1-based, per role).
    pub iteration: u32,
    /// Role of the agent.
    pub role: String,
    /// Fencing token of the writer's lease.
    pub fence: u64,
}

impl Trailers {
    /// The commit message: the first line of `output` (or a fallback) and the trailers.
    pub fn message(&self, output: &str) -> String {
        let first = output.lines().map(str::trim).find(|l| !l.is_empty());
        // The fallback names the role, which is free text: one line, like its trailer.
        let fallback = || {
            let line = format!("{} iteration {}", one_line(&self.role), self.iteration);
            line.trim().to_string()
        };
        let subject: String = first
            .map_or_else(fallback, str::to_string)
            .chars()
            .take(MAX_SUBJECT_CHARS)
            .collect();
        format!(
            "{subject}\n\n{TASK}: {}\n{ITERATION}: {}\n{ROLE}: {}\n{FENCE}: {}\n",
            self.task_id,
            self.iteration,
            one_line(&self.role),
            self.fence
        )
    }

    /// Parses `git log --format=%(trailers:only,unfold)` output; `None` without a task
    /// trailer (not a checkpoint commit).
    pub fn parse(text: &str) -> Option<Self> {
        let mut t = Trailers::default();
        let mut has_task = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                TASK => {
                    t.task_id = value.to_string();
                    has_task = true;
                }
                ITERATION => t.iteration = value.parse().ok()?,
                ROLE => t.role = value.to_string(),
                FENCE => t.fence = value.parse().ok()?,
                _ => {}
            }
        }
        has_task.then_some(t)
    }
}

/// Roles are free text from the router's plan; a trailer holds one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips() {
        let t = Trailers {
            task_id: "t-1".into(),
            iteration: 3,
            role: "backend".into(),
            fence: 7,
        };
        let m = t.message("\n  Fix the login form  \nmore detail");
        assert!(m.starts_with("Fix the login form\n\n"), "{m}");
        let trailers: String = m.lines().skip(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(Trailers::parse(&trailers), Some(t.clone()));
        assert!(t.message("").starts_with("backend iteration 3\n"));
        assert_eq!(Trailers::parse("Signed-off-by: x"), None);
    }

    #[test]
    fn the_fallback_subject_is_one_short_line_whatever_the_role() {
        let t = Trailers {
            task_id: "t-1".into(),
            iteration: 2,
            role: format!("a\nTaskrouter-Fence: 9\n\n{}", "r".repeat(300)),
            fence: 7,
        };
        let m = t.message(" \n\t\n");
        let (subject, block) = m.split_once("\n\n").unwrap();
        assert!(
            subject.starts_with("a Taskrouter-Fence: 9  rrr"),
            "{subject:?}"
        );
        assert_eq!(subject.chars().count(), MAX_SUBJECT_CHARS);
        assert_eq!(Trailers::parse(block).map(|p| p.fence), Some(7));
    }
}
