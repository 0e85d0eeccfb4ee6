//! The Grafana dashboard and the PrometheusRule (`deploy/k8s/monitoring`) query only
//! metrics the services really export: a real run of the router and an executor, both
//! scraped over HTTP, must show every metric name, and every `label="value"` the
//! queries select on.

mod common;

use common::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use taskrouter_proto::v1::{Complexity, SubmitRequest};
use test_support::client::{task, wait_final};

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no metrics endpoint at {addr}");
}

/// Every series in an exposition: name -> the label sets seen.
fn series(body: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map(|(l, _)| l.to_string())
            .unwrap_or_default();
        out.entry(line[..end].to_string()).or_default().push(labels);
    }
    out
}

/// `(metric, [(label, value)])` for every `taskrouter_*` metric named in `expr`.
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("taskrouter_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut matchers = Vec::new();
        if let Some(inner) = tail[end..]
            .strip_prefix('{')
            .and_then(|t| t.split_once('}'))
        {
            for m in inner.0.split(',').filter(|m| !m.trim().is_empty()) {
                let (k, v) = m.split_once('=').expect("label matcher");
                assert!(
                    !k.ends_with('!') && !v.starts_with('~'),
                    "only = matchers: {m}"
                );
                matchers.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

fn queries() -> Vec<(String, String)> {
    let root = test_support::workspace_root().join("deploy/k8s/monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/taskrouter.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push((
                format!("dashboard panel {:?}", panel["title"]),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    let rule: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("prometheusrule.yaml")).expect("rule"),
    )
    .expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    for group in rule["spec"]["groups"].as_sequence().expect("groups") {
        for r in group["rules"].as_sequence().expect("rules") {
            out.push((
                format!("alert {:?}", r["alert"].as_str().unwrap_or("?")),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let qs = queries();
    assert!(qs.len() >= 15, "{qs:?}");
    let alerts: BTreeSet<String> = qs
        .iter()
        .filter(|(w, _)| w.starts_with("alert"))
        .map(|(w, _)| w.clone())
        .collect();
    for want in ["Fallback", "DeadLetters", "QueueLag", "NotServing"] {
        assert!(alerts.iter().any(|a| a.contains(want)), "{alerts:?}");
    }

    let router_metrics = format!("127.0.0.1:{}", test_support::free_port());
    let exec_metrics = format!("127.0.0.1:{}", test_support::free_port());
    let mut c = Cluster::start_with(&[], &["--metrics-listen", &router_metrics]).await;
    c.add_executor(
        "mon-a",
        &["--concurrency", "2", "--metrics-listen", &exec_metrics],
    )
    .await;
    let mut client = c.client(0).await;
    let tasks = [
        task(
            "MON-1",
            "Fix typo in README",
            Complexity::Low,
            10.0,
            &["org/a"],
            &[],
        ),
        task(
            "MON-2",
            "Implement new payment processing",
            Complexity::High,
            500.0,
            &["org/a"],
            &[],
        ),
        task(
            "MON-3",
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
        wait_final(&mut client, &t.id, Duration::from_secs(60)).await;
    }
    // The queue gauges are refreshed by the health loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut exported = series(&scrape(&router_metrics).await);
    for (name, labels) in series(&scrape(&exec_metrics).await) {
        exported.entry(name).or_default().extend(labels);
    }

    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for (where_, expr) in &qs {
        for (name, matchers) in selectors(expr) {
            checked.insert(name.clone());
            let Some(labels) = exported.get(&name) else {
                missing.push(format!("{where_}: {name} is not exported"));
                continue;
            };
            for (k, v) in &matchers {
                let want = format!("{k}=\"{v}\"");
                if !labels.iter().any(|l| l.split(',').any(|p| p == want)) {
                    missing.push(format!("{where_}: no {name} series with {want}"));
                }
            }
        }
    }
    // Every kind of metric the issue asks for is on the dashboard or in the rules.
    for want in [
        "taskrouter_routing_decisions_total",
        "taskrouter_executor_routing_total",
        "taskrouter_tasks_total",
        "taskrouter_task_cost_usd_sum",
        "taskrouter_fallbacks_total",
        "taskrouter_agent_call_duration_seconds_bucket",
        "taskrouter_checkpoint_duration_seconds_bucket",
        "taskrouter_queue_length",
        "taskrouter_queue_pending",
        "taskrouter_dead_letters_total",
        "taskrouter_serving",
    ] {
        assert!(
            checked.contains(want),
            "nothing queries {want}: {checked:?}"
        );
    }
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}\nexported: {:?}",
        missing.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
}
