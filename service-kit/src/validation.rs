//! Collects every field problem in a request and turns them into one
//! `INVALID_ARGUMENT` status carrying google.rpc `BadRequest` field violations.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One problem with one request field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field, e.g. `task.estimated_value_usd`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Accumulates field violations while a request is checked.
#[derive(Clone, Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recorded problems.
    pub fn as_slice(&self) -> &[FieldViolation] {
        &self.0
    }

    /// `Ok(())` when empty, otherwise the `INVALID_ARGUMENT` status for them.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_status())
        }
    }

    /// The `INVALID_ARGUMENT` status: the message names every field, and the details
    /// carry one `BadRequest.FieldViolation` per problem.
    pub fn into_status(self) -> Status {
        let message = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        for v in &self.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        Status::with_error_details(Code::InvalidArgument, message, details)
    }
}

/// Reads the field violations out of a status, for clients and tests.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a task id: 1..=256 bytes of printable ASCII without whitespace, so it is safe
/// inside Redis keys, metric-free logs and file names.
pub fn check_task_id(v: &mut Violations, field: &str, id: &str) {
    if let Some(problem) = task_id_problem(id) {
        v.add(field, problem);
    }
}

/// What is wrong with a task id, if anything (see [`check_task_id`]).
fn task_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > 256 {
        Some("must be at most 256 bytes")
    } else if !id.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without whitespace or control characters")
    } else {
        None
    }
}

/// Size limits on a submitted task, shared by both services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLimits {
    /// Largest description in bytes.
    pub max_description_bytes: usize,
    /// Most repositories.
    pub max_repositories: usize,
    /// Most labels.
    pub max_labels: usize,
    /// Longest label key, label value or repository name, in bytes.
    pub max_item_bytes: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_description_bytes: 1024 * 1024,
            max_repositories: 256,
            max_labels: 256,
            max_item_bytes: 1024,
        }
    }
}

/// Checks every field of a task, recording problems under `prefix` (e.g. `task`).
pub fn check_task(
    v: &mut Violations,
    prefix: &str,
    task: &taskrouter_proto::v1::Task,
    limits: &TaskLimits,
) {
    use taskrouter_proto::v1::Complexity;
    // The field name is only built for a problem: a valid task allocates nothing here.
    if let Some(problem) = task_id_problem(&task.id) {
        v.add(format!("{prefix}.id"), problem);
    }
    if task.description.len() > limits.max_description_bytes {
        v.add(
            format!("{prefix}.description"),
            format!(
                "is {} bytes; the limit is {} bytes",
                task.description.len(),
                limits.max_description_bytes
            ),
        );
    }
    match Complexity::try_from(task.complexity) {
        Ok(Complexity::Unspecified) => v.add(
            format!("{prefix}.complexity"),
            "must be set (LOW, MEDIUM, HIGH or CRITICAL)",
        ),
        Ok(_) => {}
        Err(_) => v.add(
            format!("{prefix}.complexity"),
            format!("unknown value {}", task.complexity),
        ),
    }
    let value = task.estimated_value_usd;
    if !value.is_finite() {
        v.add(
            format!("{prefix}.estimated_value_usd"),
            "must be a finite number",
        );
    } else if value < 0.0 {
        v.add(
            format!("{prefix}.estimated_value_usd"),
            "must not be negative",
        );
    }
    if task.repositories.len() > limits.max_repositories {
        v.add(
            format!("{prefix}.repositories"),
            format!("at most {} repositories", limits.max_repositories),
        );
    } else {
        for (i, repo) in task.repositories.iter().enumerate() {
            if repo.trim().is_empty() {
                v.add(format!("{prefix}.repositories[{i}]"), "must not be empty");
            } else if repo.len() > limits.max_item_bytes {
                v.add(
                    format!("{prefix}.repositories[{i}]"),
                    format!("longer than {} bytes", limits.max_item_bytes),
                );
            }
        }
    }
    if task.labels.len() > limits.max_labels {
        v.add(
            format!("{prefix}.labels"),
            format!("at most {} labels", limits.max_labels),
        );
    } else if task.labels.iter().any(|(k, val)| {
        k.is_empty() || k.len() > limits.max_item_bytes || val.len() > limits.max_item_bytes
    }) {
        v.add(
            format!("{prefix}.labels"),
            format!(
                "keys must be non-empty and keys and values at most {} bytes",
                limits.max_item_bytes
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_task_field_is_named() {
        let task = taskrouter_proto::v1::Task {
            id: String::new(),
            description: "x".repeat(11),
            complexity: 99,
            estimated_value_usd: f64::NAN,
            repositories: vec![" ".into()],
            labels: [(String::new(), "v".into())].into_iter().collect(),
        };
        let limits = TaskLimits {
            max_description_bytes: 10,
            ..TaskLimits::default()
        };
        let mut v = Violations::new();
        check_task(&mut v, "task", &task, &limits);
        let fields: Vec<_> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "task.id",
                "task.description",
                "task.complexity",
                "task.estimated_value_usd",
                "task.repositories[0]",
                "task.labels"
            ]
        );
        let mut v = Violations::new();
        let ok = taskrouter_proto::v1::Task {
            id: "T-1".into(),
            complexity: 1,
            estimated_value_usd: 0.0,
            ..Default::default()
        };
        check_task(&mut v, "task", &ok, &TaskLimits::default());
        assert!(v.is_empty());
        let neg = taskrouter_proto::v1::Task {
            estimated_value_usd: -1.0,
            ..ok
        };
        check_task(&mut v, "task", &neg, &TaskLimits::default());
        assert_eq!(v.as_slice()[0].field, "task.estimated_value_usd");
    }

    #[test]
    fn violations_round_trip_through_status_details() {
        let mut v = Violations::new();
        v.add("task.id", "must not be empty");
        v.add("task.estimated_value_usd", "must be finite");
        let status = v.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("task.id"));
        let got = field_violations(&status);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].field, "task.estimated_value_usd");
    }

    #[test]
    fn task_ids_are_checked() {
        for (id, ok) in [
            ("", false),
            ("a b", false),
            ("TASK-1", true),
            ("x\n", false),
            ("é", false),
        ] {
            let mut v = Violations::new();
            check_task_id(&mut v, "task_id", id);
            assert_eq!(v.is_empty(), ok, "{id:?}");
        }
        let mut v = Violations::new();
        check_task_id(&mut v, "task_id", &"a".repeat(257));
        assert!(!v.is_empty());
    }
}
