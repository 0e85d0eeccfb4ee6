//! `--health-listen`: an executor whose gRPC port needs TLS and a token still answers
//! plaintext health probes on a second port, with the same statuses (NOT_SERVING while
//! Redis is down and once shutdown starts), and serves nothing else there.

mod common;

use executor_service::SERVICE_NAME;
use service_kit::security::Secret;
use service_kit::tls::ServerTlsArgs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::GetRequest;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use test_support::client::{endpoint, tls_endpoint};
use test_support::{RedisServer, TestPki, free_port, health_status, wait_for_grpc_serving_at};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "executor-health-port-token-0123456789";

/// Polls both ports until each reports `want` for the executor and for "".
async fn wait_both(main: &Channel, health: &Channel, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seen = Vec::new();
        for service in [SERVICE_NAME, ""] {
            seen.push(health_status(main.clone(), service).await.unwrap());
            seen.push(health_status(health.clone(), service).await.unwrap());
        }
        if seen.iter().all(|s| *s == want as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "wanted {want:?} on both ports, saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_health_port_mirrors_the_tls_port_through_a_redis_outage_and_shutdown() {
    let pki = TestPki::generate();
    let mut redis = RedisServer::start();
    let health_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = common::test_config(&redis);
    config.server.tls = ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    };
    config.server.auth.auth_token = Some(Secret::new(TOKEN));
    config.server.health_listen = health_addr.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = service_kit::Shutdown::new();
    let server = tokio::spawn(executor_service::serve(config, listener, shutdown.clone()));
    assert!(
        wait_for_grpc_serving_at(
            tls_endpoint(addr.port(), pki.client_config()),
            SERVICE_NAME,
            Duration::from_secs(15)
        )
        .await,
        "executor never became SERVING on its TLS port"
    );
    let main = tls_endpoint(addr.port(), pki.client_config())
        .connect()
        .await
        .unwrap();
    let health = endpoint(health_addr).connect().await.unwrap();
    wait_both(&main, &health, ServingStatus::Serving).await;

    // Nothing but health on the health port, even with the right token.
    let mut req = tonic::Request::new(GetRequest {
        task_id: "anything".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let err = ExecutorClient::new(health.clone())
        .get(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // Redis down: NOT_SERVING on both ports; back up: SERVING on both.
    redis.stop();
    wait_both(&main, &health, ServingStatus::NotServing).await;
    redis.start_again();
    wait_both(&main, &health, ServingStatus::Serving).await;

    // Shutdown: the health port reports NOT_SERVING before it goes away with the server.
    let mut watch = HealthClient::new(health.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    shutdown.trigger();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the health port reported the shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop((watch, main, health));
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("executor stopped in time")
        .unwrap()
        .unwrap();
    let gone = endpoint(health_addr)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(gone.is_err(), "the health port outlived the executor");
}

#[test]
fn check_config_rejects_a_bad_health_address_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_executor-service"))
        .args(["--check-config", "--router-addr", ""])
        .env("TASKROUTER_HEALTH_LISTEN", "not-an-address")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TASKROUTER_HEALTH_LISTEN"), "{stderr}");
}
