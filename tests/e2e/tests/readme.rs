//! The README's configuration table must stay true: every flag and environment variable
//! the real service binaries (router, executor, rollout controller) accept appears in it.

use std::process::Command;

fn help(binary: &str) -> String {
    let out = Command::new(test_support::binary_path(binary))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (`--flag`, `ENV_NAME` if any) for every option in clap's long help.
fn options(help: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            out.push((format!("--{name}"), None));
        } else if let Some(rest) = t.strip_prefix("[env: ") {
            let env: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(last) = out.last_mut() {
                last.1 = Some(env);
            }
        }
    }
    out.retain(|(f, _)| f != "--help" && f != "--version");
    out
}

#[test]
fn every_flag_and_environment_variable_of_every_service_binary_is_in_the_readme() {
    let readme = std::fs::read_to_string(test_support::workspace_root().join("README.md"))
        .expect("README.md");
    let mut missing = Vec::new();
    for binary in ["router-service", "executor-service", "rollout-controller"] {
        let opts = options(&help(binary));
        assert!(
            opts.len() > 10,
            "{binary}: parsed too few options: {opts:?}"
        );
        for (flag, env) in opts {
            if !readme.contains(&format!("`{flag}`")) {
                missing.push(format!("{binary} {flag}"));
            }
            if let Some(env) = env
                && !readme.contains(&format!("`{env}`"))
            {
                missing.push(format!("{binary} {flag} env {env}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README configuration table lacks: {missing:#?}"
    );
}
