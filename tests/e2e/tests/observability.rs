//! One trace per task across both services, exported over OTLP to a receiver inside the
//! test; Prometheus counters moved by the expected amounts; no task description in any
//! span.

mod common;

use common::Cluster;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskrouter_proto::v1::{Complexity, SubmitRequest, TaskStatus};
use test_support::client::{state, task, wait_final};
use test_support::metrics::{metric, scrape};

/// A span with the service that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| text(a.value.as_ref()))
}

fn all_values(span: &Span) -> Vec<String> {
    let mut v: Vec<String> = span
        .attributes
        .iter()
        .map(|a: &KeyValue| text(a.value.as_ref()))
        .collect();
    v.push(span.name.clone());
    for e in &span.events {
        v.push(e.name.clone());
        v.extend(e.attributes.iter().map(|a| text(a.value.as_ref())));
    }
    v
}

async fn start_receiver() -> (std::net::SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = Receiver::default();
    let svc = TraceServiceServer::new(rx.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (addr, rx)
}

fn otel_env(addr: std::net::SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_string()),
    ]
}

const SECRET: &str = "PATIENT-7731 John Q. Example DOB 1970-01-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn submit_traced(
    client: &mut taskrouter_proto::v1::executor_client::ExecutorClient<tonic::transport::Channel>,
    t: taskrouter_proto::v1::Task,
) {
    let mut req = tonic::Request::new(SubmitRequest {
        task: Some(t),
        ..Default::default()
    });
    // The caller's own trace: everything downstream must join it.
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.submit(req).await.unwrap();
}

async fn stop_and_collect(c: &mut Cluster, rx: &Receiver) -> Vec<Got> {
    for e in c.executors.iter_mut() {
        e.process.sigterm();
        let _ = e.process.wait_exit(Duration::from_secs(15)).await;
    }
    if let Some(r) = c.router.as_mut() {
        r.sigterm();
        let _ = r.wait_exit(Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    rx.0.lock().unwrap().clone()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn one_task_is_one_trace_across_both_services_without_its_description() {
    let (addr, rx) = start_receiver().await;
    let mut env = otel_env(addr);
    // Logs at debug must not widen what is exported: traces have their own filter.
    env.push(("RUST_LOG", "debug".to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut c = Cluster::start_with(&env, &[]).await;
    c.add_executor("exec-a", &["--concurrency", "1"]).await;
    let mut client = c.client(0).await;
    let t = task(
        "T-TRACE",
        &format!("Rotate HIPAA credentials for {SECRET}"),
        Complexity::Medium,
        50.0,
        &["org/ehr"],
        &[],
    );
    submit_traced(&mut client, t).await;
    let fin = wait_final(&mut client, "T-TRACE", Duration::from_secs(30)).await;
    assert_eq!(
        TaskStatus::try_from(fin.status).unwrap(),
        TaskStatus::Completed
    );
    let spans = stop_and_collect(&mut c, &rx).await;

    // OTEL_TRACES_FILTER's default: the services' own spans only, whatever RUST_LOG says.
    let foreign: Vec<(String, String)> = spans
        .iter()
        .filter_map(|g| {
            let target = attr(&g.span, "target").unwrap_or_default();
            let ours = ["router_service", "executor_service", "service_kit"]
                .iter()
                .any(|c| target == *c || target.starts_with(&format!("{c}::")));
            (!ours).then(|| (g.span.name.clone(), target))
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "spans from other crates exported: {foreign:?}"
    );
    assert!(
        !spans.iter().any(|g| attr(&g.span, "thread.name").is_some()),
        "per-span thread names are not recorded"
    );

    let ours: Vec<&Got> = spans
        .iter()
        .filter(|g| hex(&g.span.trace_id) == TRACE_ID)
        .collect();
    let services: std::collections::HashSet<&str> =
        ours.iter().map(|g| g.service.as_str()).collect();
    assert!(
        services.contains("router-service") && services.contains("executor-service"),
        "services in the trace: {services:?}"
    );

    let client_span = ours
        .iter()
        .find(|g| {
            g.service == "executor-service"
                && g.span.name == "taskrouter.v1.Router/Route"
                && g.span.kind == SpanKind::Client as i32
        })
        .expect("executor's client span for Route");
    let server_span = ours
        .iter()
        .find(|g| {
            g.service == "router-service"
                && g.span.name == "taskrouter.v1.Router/Route"
                && g.span.kind == SpanKind::Server as i32
        })
        .expect("router's server span for Route");
    assert_eq!(
        server_span.span.parent_span_id, client_span.span.span_id,
        "router span is a child of the executor's client span"
    );
    assert_eq!(
        attr(&server_span.span, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attr(&server_span.span, "rpc.service").as_deref(),
        Some("taskrouter.v1.Router")
    );
    assert_eq!(
        attr(&server_span.span, "rpc.method").as_deref(),
        Some("Route")
    );
    assert_eq!(
        attr(&server_span.span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let route = ours
        .iter()
        .find(|g| g.span.name == "route")
        .expect("route span");
    assert_eq!(
        attr(&route.span, "route.decision").as_deref(),
        Some("multi_agent")
    );
    assert!(
        attr(&route.span, "route.reasons")
            .unwrap_or_default()
            .contains("compliance_sensitive")
    );
    assert!(attr(&route.span, "policy.version").is_some_and(|v| !v.is_empty()));

    assert!(
        ours.iter()
            .any(|g| g.span.name == "taskrouter.v1.Executor/Submit"
                && g.span.kind == SpanKind::Server as i32)
    );
    assert!(ours.iter().any(|g| g.span.name == "task.run"));
    let iterations = ours
        .iter()
        .filter(|g| g.span.name == "agent.iteration")
        .count();
    assert!(iterations >= 3, "iteration spans: {iterations}");
    let checkpoints: Vec<&&Got> = ours
        .iter()
        .filter(|g| g.span.name == "checkpoint")
        .collect();
    assert!(
        checkpoints.len() >= iterations,
        "one checkpoint per iteration at least"
    );
    assert!(
        checkpoints
            .iter()
            .all(|g| attr(&g.span, "db.system").as_deref() == Some("redis"))
    );
    assert!(ours.iter().any(|g| g.span.name == "team.specialist"));

    for g in &spans {
        for v in all_values(&g.span) {
            assert!(
                !v.contains("PATIENT-7731") && !v.contains("John Q."),
                "description leaked into span {}: {v}",
                g.span.name
            );
        }
    }
}

#[tokio::test]
async fn a_reclaimed_task_continues_the_same_trace() {
    let (addr, rx) = start_receiver().await;
    let env = otel_env(addr);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut c = Cluster::start_with(&env, &[]).await;
    c.add_executor("exec-a", &["--concurrency", "1"]).await;
    let mut client = c.client(0).await;
    let t = task(
        "T-RECLAIM",
        "Fix a flaky test",
        Complexity::Low,
        5.0,
        &["org/app"],
        &[("sim.iterations", "30"), ("sim.latency_ms", "50")],
    );
    submit_traced(&mut client, t).await;
    loop {
        if state(&mut client, "T-RECLAIM").await.iteration_count >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.executors[0].process.kill9();
    c.add_executor("exec-b", &["--concurrency", "1"]).await;
    let mut client = c.client(1).await;
    wait_final(&mut client, "T-RECLAIM", Duration::from_secs(60)).await;
    let spans = stop_and_collect(&mut c, &rx).await;
    let reclaimed = spans
        .iter()
        .find(|g| {
            g.span.name == "task.run" && attr(&g.span, "queue.reclaimed").as_deref() == Some("true")
        })
        .expect("the reclaiming executor's run span");
    assert_eq!(
        hex(&reclaimed.span.trace_id),
        TRACE_ID,
        "the reclaimed run joins the submitter's trace"
    );
}

#[tokio::test]
async fn metrics_count_decisions_outcomes_and_fallbacks() {
    let router_metrics = format!("127.0.0.1:{}", test_support::free_port());
    let exec_metrics = format!("127.0.0.1:{}", test_support::free_port());
    let mut c = Cluster::start_with(&[], &["--metrics-listen", &router_metrics]).await;
    c.add_executor(
        "exec-a",
        &["--concurrency", "2", "--metrics-listen", &exec_metrics],
    )
    .await;
    let mut client = c.client(0).await;
    let tasks = [
        task(
            "M-1",
            "Fix typo in README",
            Complexity::Low,
            10.0,
            &["org/a"],
            &[],
        ),
        task(
            "M-2",
            "Fix a null check",
            Complexity::Low,
            10.0,
            &["org/a"],
            &[],
        ),
        task(
            "M-3",
            "Implement new payment processing",
            Complexity::High,
            500.0,
            &["org/a"],
            &[],
        ),
        task(
            "M-4",
            "Deploy to production",
            Complexity::Medium,
            50.0,
            &["org/a"],
            &[("sim.fail_step", "synthesis")],
        ),
    ];
    for t in &tasks {
        client
            .submit(SubmitRequest {
                task: Some(t.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for t in &tasks {
        wait_final(&mut client, &t.id, Duration::from_secs(30)).await;
    }
    let r = scrape(&router_metrics).await;
    assert_eq!(
        metric(
            &r,
            "taskrouter_routing_decisions_total",
            &[("decision", "single_agent"), ("reason", "simple_task")]
        ),
        2.0,
        "{r}"
    );
    assert_eq!(
        metric(
            &r,
            "taskrouter_routing_decisions_total",
            &[("decision", "multi_agent"), ("reason", "deployment")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &r,
            "taskrouter_routing_decisions_total",
            &[("decision", "multi_agent"), ("reason", "high_value")]
        ),
        1.0
    );
    let e = scrape(&exec_metrics).await;
    assert_eq!(
        metric(
            &e,
            "taskrouter_tasks_total",
            &[("outcome", "completed"), ("path", "single")]
        ),
        3.0,
        "{e}"
    );
    assert_eq!(
        metric(
            &e,
            "taskrouter_tasks_total",
            &[("outcome", "completed"), ("path", "multi")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &e,
            "taskrouter_fallbacks_total",
            &[("cause", "synthesis_failed")]
        ),
        1.0
    );
    assert!(metric(&e, "taskrouter_iterations_total", &[]) >= 8.0);
    assert!(metric(&e, "taskrouter_checkpoint_duration_seconds_count", &[]) >= 8.0);
    assert_eq!(metric(&e, "taskrouter_task_cost_usd_count", &[]), 4.0);
    assert!(
        metric(
            &e,
            "taskrouter_rpc_duration_seconds_count",
            &[("method", "Submit"), ("code", "Ok")]
        ) >= 4.0
    );
}
