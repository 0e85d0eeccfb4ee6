//! taskctl against a router that serves mutual TLS and requires a bearer token.

use std::process::Command;
use std::time::Duration;
use test_support::TestPki;
use test_support::{ServiceProcess, free_port};

const TOKEN: &str = "taskctl-test-token-0123456789abcdef";

fn taskctl(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskctl"));
    cmd.args(args).env_remove("TASKCTL_TOKEN");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run taskctl")
}

#[tokio::test]
async fn taskctl_reaches_a_router_over_mutual_tls_with_a_token() {
    let pki = TestPki::generate();
    let token_file = pki.dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let router = ServiceProcess::spawn(
        "router-service",
        &[
            "--listen",
            &listen,
            "--tls-cert",
            pki.server_cert.to_str().unwrap(),
            "--tls-key",
            pki.server_key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca.to_str().unwrap(),
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        test_support::wait_for_tcp(listen.parse().unwrap(), Duration::from_secs(20)).await,
        "{}",
        router.log_contents()
    );
    let url = format!("https://localhost:{port}");
    let full = [
        "--router",
        &url,
        "--tls-ca",
        pki.ca.to_str().unwrap(),
        "--tls-cert",
        pki.client_cert.to_str().unwrap(),
        "--tls-key",
        pki.client_key.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--json",
        "policy",
    ];
    // The router may still be loading; retry briefly.
    let mut out = taskctl(&full, &[]);
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = taskctl(&full, &[]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    // The token from the environment works too.
    let env_only = [
        "--router",
        &url,
        "--tls-ca",
        pki.ca.to_str().unwrap(),
        "--tls-cert",
        pki.client_cert.to_str().unwrap(),
        "--tls-key",
        pki.client_key.to_str().unwrap(),
        "policy",
    ];
    let out = taskctl(&env_only, &[("TASKCTL_TOKEN", TOKEN)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the token: UNAUTHENTICATED, one line, and the token never printed.
    let out = taskctl(&env_only, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    assert!(!err.contains(TOKEN));

    // Without a client certificate the TLS handshake is refused: a clear failure, exit != 0.
    let out = taskctl(
        &[
            "--router",
            &url,
            "--tls-ca",
            pki.ca.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "policy",
        ],
        &[],
    );
    assert!(!out.status.success());

    // A bad TLS file is a usage error naming the flag.
    let out = taskctl(
        &[
            "--router",
            &url,
            "--tls-ca",
            token_file.to_str().unwrap(),
            "policy",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
}
