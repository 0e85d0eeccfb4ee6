//! What the TLS and authentication settings share: their error type, secret strings that
//! never print and bounded file reads. Below `tls` and `auth`, which both build on it.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Largest certificate, key or token file read (they are a few KiB at most).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a TLS or authentication setting cannot be used. Every message is one line that
/// names the setting and never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        /// Flag (and env var) that named the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A file was read but its content is unusable.
    #[error("{setting}: {}: {problem}", path.display())]
    Invalid {
        /// Flag (and env var) that named the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Settings that do not fit together, or a value that is not a file.
    #[error("{0}")]
    Config(String),
}

/// A secret string (a token from the environment): `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value of environment variable `name`, if set and not blank.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(Self)
    }

    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads `path` (at most [`MAX_FILE_BYTES`]), naming `setting` on failure.
pub fn read_file(path: &Path, setting: &str) -> Result<Vec<u8>, SecurityError> {
    let read_err = |source| SecurityError::Read {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SecurityError::Invalid {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            problem: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// `--{prefix}{name} / {ENV_PREFIX}{NAME}`: how errors name a client-side setting.
pub fn setting_name(flag_prefix: &str, env_prefix: &str, name: &str) -> String {
    let flag = format!("{flag_prefix}{name}");
    if env_prefix.is_empty() {
        return flag;
    }
    let env = format!(
        "{env_prefix}{}",
        name.replace('-', "_").to_ascii_uppercase()
    );
    format!("{flag} / {env}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }

    #[test]
    fn setting_names_pair_flag_and_env() {
        assert_eq!(
            setting_name("--router-", "EXECUTOR_ROUTER_", "tls-ca"),
            "--router-tls-ca / EXECUTOR_ROUTER_TLS_CA"
        );
        assert_eq!(setting_name("--", "", "tls-key"), "--tls-key");
    }

    #[test]
    fn file_errors_are_one_line_and_name_the_setting() {
        let e = read_file(Path::new("/no/such/file.pem"), "--tls-cert").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("--tls-cert: cannot read /no/such/file.pem"),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
