//! Changing the policy the router reads.
//!
//! [`with_rollout_percent`] sets `multi_agent.rollout_percent` in a policy text (keeping
//! its comments and layout) and validates the result with the router's own parser: a text
//! that would not load in the router is an error and never reaches a writer.
//! [`FileWriter`] replaces a policy file atomically (temporary file in the same directory,
//! fsync, rename), so the router's watcher never sees a half-written file.

use crate::error::{Error, Result};
use router_service::PolicyEngine;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the live policy lives.
pub trait PolicyWriter {
    /// The policy text in force (what the router reads).
    fn read(&self) -> impl std::future::Future<Output = Result<String>> + Send;
    /// Replaces the policy with `text`, which the caller has validated.
    fn write(&self, text: &str) -> impl std::future::Future<Output = Result<()>> + Send;
    /// Where, for logs.
    fn describe(&self) -> String;
}

/// `text` with `multi_agent.rollout_percent = percent`, validated by the router's parser.
/// Returns the new text and its policy version.
pub fn with_rollout_percent(text: &str, percent: u32) -> Result<(String, String)> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| Error::PolicyRejected(one_line(&e.to_string())))?;
    let table = doc
        .entry("multi_agent")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = table.as_table_like_mut() else {
        return Err(Error::PolicyRejected(
            "multi_agent is not a table".to_string(),
        ));
    };
    match table.get_mut("rollout_percent") {
        // Replacing the value in place keeps the comments above the key.
        Some(item) => *item = toml_edit::value(i64::from(percent)),
        None => {
            table.insert("rollout_percent", toml_edit::value(i64::from(percent)));
        }
    }
    let out = doc.to_string();
    let version = validate(&out)?;
    Ok((out, version))
}

/// Parses `text` as the router would; returns its version.
pub fn validate(text: &str) -> Result<String> {
    PolicyEngine::from_toml(text, "policy to write")
        .map(|e| e.version().to_string())
        .map_err(|e| Error::PolicyRejected(e.to_string()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A policy file rewritten atomically.
#[derive(Clone, Debug)]
pub struct FileWriter {
    path: PathBuf,
}

impl FileWriter {
    /// The writer of `path` (the router's `--policy`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::PolicyFile {
            path: self.path.clone(),
            source,
        }
    }
}

impl PolicyWriter for FileWriter {
    async fn read(&self) -> Result<String> {
        tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| self.io(e))
    }

    async fn write(&self, text: &str) -> Result<()> {
        // Belt and braces: whatever the caller did, an invalid text is never written.
        validate(text)?;
        let path = self.path.clone();
        let text = text.to_string();
        tokio::task::spawn_blocking(move || replace_atomically(&path, &text))
            .await
            .map_err(|e| self.io(std::io::Error::other(e.to_string())))?
            .map_err(|e| self.io(e))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Writes `text` beside `path` and renames it over `path`.
fn replace_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_string());
    let tmp = dir.join(format!(".{name}.rollout-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percent_is_set_and_comments_survive() {
        let base = "# candidate for Q3\n[multi_agent]\n# start small\nrollout_percent = 10\n\n[rules]\nvalue_threshold_usd = 500.0\n";
        let (text, version) = with_rollout_percent(base, 25).unwrap();
        assert!(text.contains("# candidate for Q3"));
        assert!(text.contains("# start small"));
        assert!(text.contains("rollout_percent = 25"));
        assert!(text.contains("value_threshold_usd = 500.0"));
        let engine = PolicyEngine::from_toml(&text, "t").unwrap();
        assert_eq!(engine.settings().multi_agent.rollout_percent, 25);
        assert_eq!(engine.version(), version);
    }

    #[test]
    fn a_policy_without_the_table_gets_one() {
        let (text, _) = with_rollout_percent("[rules]\nvalue_threshold_usd = 5.0\n", 50).unwrap();
        let engine = PolicyEngine::from_toml(&text, "t").unwrap();
        assert_eq!(engine.settings().multi_agent.rollout_percent, 50);
    }

    #[test]
    fn a_text_the_router_would_reject_is_an_error() {
        let e = with_rollout_percent("[rules]\nvalue_threshold_usd = -1.0\n", 10).unwrap_err();
        assert!(e.to_string().contains("rules.value_threshold_usd"), "{e}");
        assert!(with_rollout_percent("not = [toml", 10).is_err());
        assert!(with_rollout_percent("[multi_agent]\nrollout_percent = 10\n", 101).is_err());
    }

    #[tokio::test]
    async fn an_invalid_text_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[multi_agent]\nrollout_percent = 10\n").unwrap();
        let writer = FileWriter::new(&path);
        let e = writer
            .write("[multi_agent]\nrollout_percent = 300\n")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::PolicyRejected(_)), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[multi_agent]\nrollout_percent = 10\n"
        );
        writer
            .write("[multi_agent]\nrollout_percent = 20\n")
            .await
            .unwrap();
        assert_eq!(
            writer.read().await.unwrap(),
            "[multi_agent]\nrollout_percent = 20\n"
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
