//! `--health-listen`: a router whose gRPC port needs TLS and a token still answers
//! plaintext health probes on a second port, with the same statuses, and serves nothing
//! else there.

mod common;

use common::RunningRouter;
use router_service::{RouterConfig, SERVICE_NAME};
use service_kit::security::Secret;
use service_kit::tls::ServerTlsArgs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{Complexity, GetPolicyRequest, RouteRequest};
use test_support::client::{endpoint, tls_endpoint};
use test_support::{ServiceProcess, TestPki, free_port, health_status, wait_for_grpc_serving_at};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "router-health-port-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_router-service");

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

fn route_request() -> RouteRequest {
    RouteRequest {
        task: Some(test_support::client::task(
            "health-port",
            "fix a typo",
            Complexity::Low,
            1.0,
            &[],
            &[],
        )),
        ..Default::default()
    }
}

/// The router with TLS and a token on its gRPC port and a plaintext health port.
fn secured_config(pki: &TestPki, health: SocketAddr) -> RouterConfig {
    let mut config = RouterConfig::with_defaults();
    config.server.tls = ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    };
    config.server.auth.auth_token = Some(Secret::new(TOKEN));
    config.server.health_listen = health.to_string();
    // Long enough to observe the draining router from outside.
    config.server.drain_timeout = Duration::from_secs(3);
    config
}

#[tokio::test]
async fn the_health_port_mirrors_the_tls_port_and_serves_nothing_else() {
    let pki = TestPki::generate();
    let health_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let router = RunningRouter::start(secured_config(&pki, health_addr)).await;
    let main = tls_endpoint(router.addr.port(), pki.client_config());
    assert!(
        wait_for_grpc_serving_at(main.clone(), SERVICE_NAME, Duration::from_secs(10)).await,
        "router never became SERVING on its TLS port"
    );
    let main_channel = main.connect().await.unwrap();
    let health_channel = endpoint(health_addr).connect().await.unwrap();

    // Same statuses on both ports, without a token on either.
    for service in [SERVICE_NAME, ""] {
        let on_main = health_status(main_channel.clone(), service).await.unwrap();
        let on_health = health_status(health_channel.clone(), service)
            .await
            .unwrap();
        assert_eq!(on_health, ServingStatus::Serving as i32, "{service:?}");
        assert_eq!(on_health, on_main, "{service:?}");
    }

    // Nothing but health on the health port, whatever the caller presents.
    let mut client = RouterClient::new(health_channel.clone());
    let route = client.route(with_token(route_request())).await.unwrap_err();
    assert_eq!(route.code(), Code::Unimplemented, "{route:?}");
    let policy = client
        .get_policy(with_token(GetPolicyRequest {}))
        .await
        .unwrap_err();
    assert_eq!(policy.code(), Code::Unimplemented, "{policy:?}");
    // The main port still wants its token.
    let refused = RouterClient::new(main_channel.clone())
        .route(route_request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        RouterClient::new(main_channel.clone())
            .route(with_token(route_request()))
            .await
            .is_ok()
    );

    // A Watch on the main port keeps it draining after shutdown starts; meanwhile the
    // health port, on a fresh connection, must say NOT_SERVING like the main port does.
    let mut main_watch = HealthClient::new(main_channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = main_watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut health_watch = HealthClient::new(health_channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health_watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    router.shutdown.trigger();
    let next = tokio::time::timeout(Duration::from_secs(5), health_watch.message())
        .await
        .expect("the health port reported the shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let next = tokio::time::timeout(Duration::from_secs(5), main_watch.message())
        .await
        .expect("the main port reported the shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let fresh = endpoint(health_addr).connect().await.unwrap();
    for service in [SERVICE_NAME, ""] {
        assert_eq!(
            health_status(fresh.clone(), service).await.unwrap(),
            ServingStatus::NotServing as i32,
            "{service:?} while draining"
        );
    }
    assert!(
        !router.handle.is_finished(),
        "the main server should still be draining"
    );

    // The health port goes away with the main server.
    drop((
        main_watch,
        health_watch,
        fresh,
        health_channel,
        main_channel,
    ));
    tokio::time::timeout(Duration::from_secs(10), router.handle)
        .await
        .expect("serve returned after shutdown")
        .unwrap()
        .unwrap();
    let gone = endpoint(health_addr)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(gone.is_err(), "the health port outlived the router");
}

/// The binary with none of the caller's server variables.
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
        "TASKROUTER_HEALTH_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[tokio::test]
async fn the_binary_takes_the_health_port_from_its_environment() {
    let pki = TestPki::generate();
    let token_file = pki.dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let health_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = format!("127.0.0.1:{port}");
    let health = health_addr.to_string();
    let mut child = ServiceProcess::spawn_program(
        std::path::Path::new(BIN),
        &["--listen", &listen],
        &[
            ("TASKROUTER_TLS_CERT", pki.server_cert.to_str().unwrap()),
            ("TASKROUTER_TLS_KEY", pki.server_key.to_str().unwrap()),
            ("TASKROUTER_AUTH_TOKEN_FILE", token_file.to_str().unwrap()),
            ("TASKROUTER_HEALTH_LISTEN", &health),
        ],
    );
    assert!(
        wait_for_grpc_serving_at(endpoint(health_addr), SERVICE_NAME, Duration::from_secs(20))
            .await,
        "no plaintext health on {health}: {}",
        child.log_contents()
    );
    assert!(
        wait_for_grpc_serving_at(
            tls_endpoint(port, pki.client_config()),
            SERVICE_NAME,
            Duration::from_secs(5)
        )
        .await,
        "the gRPC port does not serve TLS: {}",
        child.log_contents()
    );
    child.sigterm();
    assert!(child.wait_exit(Duration::from_secs(20)).await.is_some());
    let log = child.log_contents();
    assert!(log.contains("health port listening"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
}

#[test]
fn a_bad_health_address_is_a_config_error_and_a_taken_one_a_runtime_error() {
    let out = router()
        .args(["--check-config", "--health-listen", "health:8081"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--health-listen"), "{stderr}");

    let out = router()
        .args(["--check-config", "--health-listen", "0.0.0.0:8081"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = router()
        .args(["--listen", &listen, "--health-listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("--health-listen"),
        "{stderr}"
    );
}
