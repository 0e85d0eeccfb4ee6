//! Builds a `Task` from flags, a JSON/YAML task file and standard input.

use crate::cli::TaskArgs;
use crate::error::{CliError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use taskrouter_proto::v1::{Complexity, Task};

/// A task file. Unknown keys are errors, so a typo does not silently drop a field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Task id.
    pub id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `low`, `medium`, `high`, `critical` (any case, `COMPLEXITY_` prefix allowed).
    pub complexity: Option<String>,
    /// Estimated value in USD.
    #[serde(alias = "value")]
    pub estimated_value_usd: Option<f64>,
    /// Repositories.
    #[serde(default, alias = "repos")]
    pub repositories: Vec<String>,
    /// Labels; numbers and booleans are taken as their text.
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
}

/// A label value as written in a file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// Another number.
    Float(f64),
    /// true / false.
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Parses a complexity name as written in a file.
pub fn parse_complexity(s: &str) -> Option<Complexity> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("COMPLEXITY_").unwrap_or(&upper);
    match name {
        "LOW" => Some(Complexity::Low),
        "MEDIUM" => Some(Complexity::Medium),
        "HIGH" => Some(Complexity::High),
        "CRITICAL" => Some(Complexity::Critical),
        _ => None,
    }
}

fn is_stdin(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn read_source(path: &Path, flag: &str) -> Result<String> {
    if is_stdin(path) {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("{flag} -: cannot read standard input: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))
    }
}

/// Parses task-file text: JSON for a `.json` file, YAML (which also reads JSON) otherwise.
pub fn parse_task_file(text: &str, path: &Path) -> Result<TaskFile> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let shown = path.display();
    if json {
        serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--file {shown}: {e}")))
    } else if text.trim().is_empty() {
        Err(CliError::Usage(format!(
            "--file {shown}: the file is empty"
        )))
    } else {
        serde_norway::from_str(text).map_err(|e| {
            CliError::Usage(format!(
                "--file {shown}: {}",
                service_kit::status_text::one_line(&e.to_string())
            ))
        })
    }
}

/// The task the flags describe. Only `--id` is checked here; the services validate the
/// rest and name any bad field.
pub fn build_task(args: &TaskArgs) -> Result<Task> {
    if let (Some(f), Some(d)) = (&args.file, &args.description_file)
        && is_stdin(f)
        && is_stdin(d)
    {
        return Err(CliError::Usage(
            "--file - and --description-file - cannot both read standard input".into(),
        ));
    }
    let file = match &args.file {
        Some(path) => parse_task_file(&read_source(path, "--file")?, path)?,
        None => TaskFile::default(),
    };
    let complexity = match (&args.complexity, &file.complexity) {
        (Some(c), _) => Complexity::from(*c),
        (None, Some(name)) => parse_complexity(name).ok_or_else(|| {
            CliError::Usage(format!(
                "--file: complexity {name:?} is not one of low, medium, high, critical"
            ))
        })?,
        (None, None) => Complexity::Unspecified,
    };
    let description = match (&args.description, &args.description_file) {
        (Some(d), _) => d.clone(),
        (None, Some(path)) => read_source(path, "--description-file")?,
        (None, None) => file.description.unwrap_or_default(),
    };
    let id = args
        .id
        .clone()
        .or(file.id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| CliError::Usage("--id is required (or \"id\" in --file)".into()))?;
    let repositories = if args.repos.is_empty() {
        file.repositories
    } else {
        args.repos.clone()
    };
    let mut labels: std::collections::HashMap<String, String> = file
        .labels
        .into_iter()
        .map(|(k, v)| (k, v.into_text()))
        .collect();
    labels.extend(args.labels.iter().cloned());
    Ok(Task {
        id,
        description,
        complexity: complexity as i32,
        estimated_value_usd: args.value.or(file.estimated_value_usd).unwrap_or(0.0),
        repositories,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ComplexityArg;
    use std::io::Write;

    fn file_with(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn a_yaml_file_with_flags_on_top() {
        let (_d, path) = file_with(
            "t.yaml",
            "id: T-1\ndescription: Rotate HIPAA credentials\ncomplexity: medium\nvalue: 50\nrepos: [a/b]\nlabels:\n  sim.iterations: 4\n  team: core\n",
        );
        let args = TaskArgs {
            file: Some(path),
            complexity: Some(ComplexityArg::High),
            labels: vec![("team".into(), "infra".into())],
            ..Default::default()
        };
        let t = build_task(&args).unwrap();
        assert_eq!(t.id, "T-1");
        assert_eq!(t.complexity, Complexity::High as i32);
        assert_eq!(t.estimated_value_usd, 50.0);
        assert_eq!(t.repositories, vec!["a/b"]);
        assert_eq!(t.labels["sim.iterations"], "4");
        assert_eq!(t.labels["team"], "infra");
    }

    #[test]
    fn a_json_file_and_its_typos() {
        let (_d, path) = file_with(
            "t.json",
            r#"{"id":"T-2","complexity":"COMPLEXITY_LOW","estimated_value_usd":10}"#,
        );
        let t = build_task(&TaskArgs {
            file: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.complexity, Complexity::Low as i32);
        let (_d, path) = file_with("t.json", r#"{"id":"T-2","valu":10}"#);
        let e = build_task(&TaskArgs {
            file: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `valu`"), "{e}");
        assert_eq!(e.exit(), crate::error::Exit::Usage);
    }

    #[test]
    fn an_id_is_required() {
        let e = build_task(&TaskArgs::default()).unwrap_err();
        assert!(e.to_string().contains("--id"), "{e}");
    }

    #[test]
    fn a_missing_file_is_a_usage_error() {
        let e = build_task(&TaskArgs {
            file: Some("/nonexistent/task.yaml".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.exit(), crate::error::Exit::Usage);
        assert!(
            e.to_string()
                .starts_with("error: --file /nonexistent/task.yaml"),
            "{e}"
        );
    }
}
