//! The router over real gRPC: routing, validation errors, GetPolicy, health, reflection.

mod common;

use common::RunningRouter;
use router_service::RouterConfig;
use service_kit::validation::field_violations;
use std::time::Duration;
use taskrouter_proto::v1::{
    Complexity, GetPolicyRequest, ReasonCode, RouteRequest, RoutingDecision, Task,
};
use test_support::client::task;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn valid() -> Task {
    task(
        "TASK-1",
        "Fix typo in README",
        Complexity::Low,
        10.0,
        &[],
        &[],
    )
}

#[tokio::test]
async fn route_answers_with_the_full_analysis() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let mut client = router.client().await;

    let simple = client
        .route(RouteRequest {
            task: Some(valid()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(simple.decision, RoutingDecision::UseSingleAgent as i32);
    assert_eq!(simple.reasons[0].code, ReasonCode::SimpleTask as i32);
    assert_eq!(simple.rollout_bucket, 62);

    let mut t = task(
        "TASK-2",
        "Rotate HIPAA credentials and deploy to production",
        Complexity::High,
        500.0,
        &[],
        &[],
    );
    t.repositories = vec!["org/a".into(), "org/b".into()];
    let multi = client
        .route(RouteRequest {
            task: Some(t),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(multi.decision, RoutingDecision::UseMultiAgent as i32);
    assert_eq!(multi.reasons.len(), 5);
    assert!(multi.multi_agent_recommended);
    assert!(
        multi
            .suggested_roles
            .contains(&"security-reviewer".to_string())
    );
    assert!(multi.suggested_roles.contains(&"repo:org/b".to_string()));
    let version = router.policy_version().await;
    assert_eq!(multi.policy_version, version);
    router.stop().await;
}

#[tokio::test]
async fn each_invalid_input_names_its_field() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let mut client = router.client().await;

    let cases: Vec<(&str, Option<Task>)> = vec![
        ("task", None),
        (
            "task.id",
            Some(Task {
                id: String::new(),
                ..valid()
            }),
        ),
        (
            "task.id",
            Some(Task {
                id: "has space".into(),
                ..valid()
            }),
        ),
        (
            "task.estimated_value_usd",
            Some(Task {
                estimated_value_usd: -1.0,
                ..valid()
            }),
        ),
        (
            "task.estimated_value_usd",
            Some(Task {
                estimated_value_usd: f64::NAN,
                ..valid()
            }),
        ),
        (
            "task.estimated_value_usd",
            Some(Task {
                estimated_value_usd: f64::INFINITY,
                ..valid()
            }),
        ),
        (
            "task.complexity",
            Some(Task {
                complexity: 0,
                ..valid()
            }),
        ),
        (
            "task.complexity",
            Some(Task {
                complexity: 17,
                ..valid()
            }),
        ),
        (
            "task.complexity",
            Some(Task {
                complexity: -3,
                ..valid()
            }),
        ),
        (
            "task.description",
            Some(Task {
                description: "x".repeat(1024 * 1024 + 1),
                ..valid()
            }),
        ),
        (
            "task.repositories[1]",
            Some(Task {
                repositories: vec!["a".into(), "".into()],
                ..valid()
            }),
        ),
        (
            "task.labels",
            Some(Task {
                labels: (0..1000)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect(),
                ..valid()
            }),
        ),
    ];
    for (field, task) in cases {
        let status = client
            .route(RouteRequest {
                task,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = field_violations(&status);
        assert_eq!(violations.len(), 1, "{field}: {violations:?}");
        assert_eq!(violations[0].field, field);
        assert!(status.message().contains(field), "{}", status.message());
    }
    router.stop().await;
}

#[tokio::test]
async fn several_invalid_fields_come_back_in_one_status() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let bad = Task {
        id: String::new(),
        complexity: 0,
        estimated_value_usd: -5.0,
        ..valid()
    };
    let status = router
        .client()
        .await
        .route(RouteRequest {
            task: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = field_violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["task.id", "task.complexity", "task.estimated_value_usd"]
    );
    router.stop().await;
}

#[tokio::test]
async fn get_policy_reports_the_builtin_policy() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let resp = router
        .client()
        .await
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.source, "builtin");
    assert_eq!(
        resp.version,
        router_service::policy::policy_version(
            router_service::policy::BUILTIN_POLICY_TOML.as_bytes()
        )
    );
    let policy = resp.policy.unwrap();
    assert!(policy.multi_agent_enabled);
    assert_eq!(policy.rollout_percent, 100);
    assert_eq!(policy.value_threshold_usd, 100.0);
    assert!(resp.loaded_at.is_some());
    router.stop().await;
}

#[tokio::test]
async fn health_reports_serving_and_turns_not_serving_on_shutdown() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let mut health = HealthClient::new(router.channel().await);
    for service in ["", "taskrouter.v1.Router"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut watch = health
        .watch(HealthCheckRequest {
            service: "taskrouter.v1.Router".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    router.shutdown.trigger();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("health update before draining")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(10), router.handle)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

/// The services `grpc.reflection.v1` lists, asked the way current clients ask.
async fn list_services_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1 reflection response: {response:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// The same through `grpc.reflection.v1alpha`, the version grpcio-reflection, Evans,
/// Postman and older grpcurl speak.
async fn list_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection response: {response:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_router_service() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let v1 = list_services_v1(router.channel().await).await;
    let v1alpha = list_services_v1alpha(router.channel().await).await;
    for names in [&v1, &v1alpha] {
        for expected in [
            "taskrouter.v1.Router",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing: {names:?}"
            );
        }
    }
    router.stop().await;
}

#[tokio::test]
async fn a_bad_policy_file_fails_serve_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[rules]\nvalue_threshold_usd = -1.0\n").unwrap();
    let config = RouterConfig {
        policy_path: Some(path),
        shadow_policy_path: None,
        ..RouterConfig::with_defaults()
    };
    let router = RunningRouter::start(config).await;
    let err = tokio::time::timeout(Duration::from_secs(5), router.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("rules.value_threshold_usd"),
        "{err}"
    );
}

#[tokio::test]
async fn a_description_at_the_size_limit_is_routed() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let limit = 1024 * 1024;
    let tail = " then deploy";
    let mut description = "a ".repeat((limit - tail.len()) / 2);
    description.push_str(tail);
    while description.len() < limit {
        description.insert(0, ' ');
    }
    assert_eq!(description.len(), limit);
    let analysis = router
        .client()
        .await
        .route(RouteRequest {
            task: Some(Task {
                description,
                ..valid()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(analysis.reasons[0].code, ReasonCode::Deployment as i32);
    router.stop().await;
}
