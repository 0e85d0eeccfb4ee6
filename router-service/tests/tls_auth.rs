//! TLS, mutual TLS and bearer-token authentication of the router, in-process and as a
//! binary, with certificates generated per test run.

mod common;

use common::RunningRouter;
use router_service::RouterConfig;
use service_kit::security::Secret;
use service_kit::tls::ServerTlsArgs;
use std::process::Command;
use std::time::Duration;
use taskrouter_proto::v1::GetPolicyRequest;
use taskrouter_proto::v1::router_client::RouterClient;
use test_support::client::{endpoint, tls_endpoint};
use test_support::{ServiceProcess, TestPki, free_port, wait_for_grpc_serving_at};
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "router-test-token-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_router-service");

fn tls_args(pki: &TestPki, mutual: bool) -> ServerTlsArgs {
    ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: mutual.then(|| pki.ca.clone()),
    }
}

/// Starts a router and waits until health, reached through `endpoint`, says SERVING.
async fn start(
    config: RouterConfig,
    endpoint: impl Fn(&RunningRouter) -> Endpoint,
) -> RunningRouter {
    let router = RunningRouter::start(config).await;
    assert!(
        wait_for_grpc_serving_at(
            endpoint(&router),
            "taskrouter.v1.Router",
            Duration::from_secs(10)
        )
        .await,
        "router never became SERVING"
    );
    router
}

async fn get_policy(channel: Channel, token: Option<&str>) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(GetPolicyRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    RouterClient::new(channel)
        .get_policy(req)
        .await
        .map(|r| r.into_inner().version)
}

#[tokio::test]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let pki = TestPki::generate();
    let mut config = RouterConfig::with_defaults();
    config.server.tls = tls_args(&pki, false);
    let router = start(config, |r| tls_endpoint(r.addr.port(), pki.client_config())).await;
    let endpoint = tls_endpoint(router.addr.port(), pki.client_config());
    let channel = endpoint.connect().await.unwrap();
    assert!(!get_policy(channel, None).await.unwrap().is_empty());

    // Plaintext HTTP/2 to a TLS port: no call gets through.
    let plain = Endpoint::from_shared(format!("http://{}", router.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => get_policy(channel, None).await.is_err(),
    };
    assert!(refused, "a plaintext client was served");

    // A client that does not trust the test CA refuses the server.
    let stranger = Endpoint::from_shared(format!("https://127.0.0.1:{}", router.addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    match stranger.connect().await {
        Err(_) => {}
        Ok(channel) => assert!(get_policy(channel, None).await.is_err()),
    }
    router.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = TestPki::generate();
    let mut config = RouterConfig::with_defaults();
    config.server.tls = tls_args(&pki, true);
    let router = start(config, |r| {
        tls_endpoint(r.addr.port(), pki.client_config_with_identity())
    })
    .await;
    let good = tls_endpoint(router.addr.port(), pki.client_config_with_identity());
    assert!(
        !get_policy(good.connect().await.unwrap(), None)
            .await
            .unwrap()
            .is_empty()
    );

    for (name, tls) in [
        ("no certificate", pki.client_config()),
        (
            "a certificate from another CA",
            pki.client_config_with_rogue_identity(),
        ),
    ] {
        let endpoint = tls_endpoint(router.addr.port(), tls).timeout(Duration::from_secs(5));
        let served = match endpoint.connect().await {
            Err(_) => false,
            Ok(channel) => get_policy(channel, None).await.is_ok(),
        };
        assert!(!served, "a client with {name} was served");
    }
    router.stop().await;
}

#[tokio::test]
async fn bearer_token_guards_everything_but_health() {
    let mut config = RouterConfig::with_defaults();
    config.server.auth.auth_token = Some(Secret::new(TOKEN));
    // `start` waits on health without a token: health is open for probes.
    let router = start(config, |r| endpoint(r.addr)).await;
    let endpoint = endpoint(router.addr);
    let channel = endpoint.connect().await.unwrap();

    for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
        let status = get_policy(channel.clone(), token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), "missing or invalid bearer token");
    }
    assert!(
        !get_policy(channel.clone(), Some(TOKEN))
            .await
            .unwrap()
            .is_empty()
    );

    // Health is open for probes, reflection is not.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let reflection = list_services(channel.clone(), None).await;
    assert_eq!(reflection.unwrap_err().code(), Code::Unauthenticated);
    let services = list_services(channel, Some(TOKEN)).await.unwrap();
    assert!(
        services.iter().any(|s| s == "taskrouter.v1.Router"),
        "{services:?}"
    );
    router.stop().await;
}

async fn list_services(
    channel: Channel,
    token: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut req = tonic::Request::new(tokio_stream::iter(vec![request]));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(req)
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(resp) = stream.message().await? {
        if let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    Ok(names)
}

/// The binary with none of the caller's security variables.
fn router() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "ROUTER_LISTEN",
        "ROUTER_POLICY",
        "TASKROUTER_TLS_CERT",
        "TASKROUTER_TLS_KEY",
        "TASKROUTER_TLS_CLIENT_CA",
        "TASKROUTER_AUTH_TOKEN",
        "TASKROUTER_AUTH_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn bad_tls_and_token_settings_are_one_line_naming_the_flag_and_exit_two() {
    let pki = TestPki::generate();
    let junk = pki.dir().join("junk.pem");
    std::fs::write(&junk, "not pem at all\n").unwrap();
    let weak = pki.dir().join("weak-token");
    std::fs::write(&weak, "tiny-secret\n").unwrap();
    let cert = pki.server_cert.to_str().unwrap();
    let key = pki.server_key.to_str().unwrap();
    let other_key = pki.client_key.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tls-cert", cert], "--tls-key"),
        (vec!["--tls-key", key], "--tls-cert"),
        (
            vec!["--tls-cert", "/no/such.pem", "--tls-key", key],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", junk.to_str().unwrap(), "--tls-key", key],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", junk.to_str().unwrap()],
            "--tls-key",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", other_key],
            "--tls-cert",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-ca",
                "/no/ca.pem",
            ],
            "--tls-client-ca",
        ),
        (
            vec!["--auth-token-file", weak.to_str().unwrap()],
            "--auth-token-file",
        ),
        (vec!["--auth-token-file", "/no/token"], "--auth-token-file"),
    ];
    for (args, flag) in cases {
        let out = router().arg("--check-config").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("tiny-secret"), "{stderr}");
    }

    let out = router()
        .arg("--check-config")
        .env("TASKROUTER_AUTH_TOKEN", "short")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TASKROUTER_AUTH_TOKEN"), "{stderr}");
    assert!(!stderr.contains("short"), "{stderr}");

    let out = router()
        .args(["--check-config", "--tls-cert", cert, "--tls-key", key])
        .args(["--tls-client-ca", pki.ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn help_never_shows_the_token() {
    let out = router()
        .arg("--help")
        .env("TASKROUTER_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("--auth-token-file"), "{help}");
    assert!(help.contains("--tls-client-ca"), "{help}");
    assert!(!help.contains(TOKEN), "{help}");
}

#[tokio::test]
async fn the_binary_serves_mutual_tls_with_a_token_file() {
    let pki = TestPki::generate();
    let token_file = pki.dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = ServiceProcess::spawn_program(
        std::path::Path::new(BIN),
        &["--listen", &listen],
        &[
            ("TASKROUTER_TLS_CERT", pki.server_cert.to_str().unwrap()),
            ("TASKROUTER_TLS_KEY", pki.server_key.to_str().unwrap()),
            ("TASKROUTER_TLS_CLIENT_CA", pki.ca.to_str().unwrap()),
            ("TASKROUTER_AUTH_TOKEN_FILE", token_file.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(pki.client_config_with_identity())
        .unwrap();
    assert!(
        wait_for_grpc_serving_at(
            endpoint.clone(),
            "taskrouter.v1.Router",
            Duration::from_secs(20)
        )
        .await,
        "router never became SERVING: {}",
        child.log_contents()
    );
    let channel = endpoint.connect().await.unwrap();
    assert_eq!(
        get_policy(channel.clone(), None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(get_policy(channel, Some(TOKEN)).await.is_ok());

    child.sigterm();
    assert!(child.wait_exit(Duration::from_secs(20)).await.is_some());
    let log = child.log_contents();
    assert!(log.contains("transport=mtls auth=token"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
}
