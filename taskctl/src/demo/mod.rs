//! `taskctl demo`: starts the router and the executor in this process on free
//! 127.0.0.1 ports (the local stack: the executor wired to the router, with the
//! simulated agent), plays the plan's "Real Workflow Testing" scenarios through their
//! gRPC APIs (the driver), prints one table (render) and exits 1 when any scenario did
//! not end as the plan expects.

pub mod driver;
pub mod workspace;

use crate::cli::{Cli, DemoArgs};
use crate::error::{CliError, Exit, Result};
use crate::output::{emit, emit_err, emit_json};
use crate::render;
use local_stack::{LocalStack, Store};
use serde_json::Value;
use std::time::Instant;

/// Plays the governance scenarios on a stack whose router reads
/// [`driver::GOVERNANCE_POLICY`].
async fn governance(store: &Store, cli: &Cli) -> Result<Vec<scenarios::Outcome>> {
    let path = std::env::temp_dir().join(format!(
        "taskrouter-demo-governance-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, driver::GOVERNANCE_POLICY)
        .map_err(|e| CliError::Runtime(format!("cannot write the demo policy: {e}")))?;
    let config = local_stack::executor_config(store);
    let stack =
        LocalStack::start_with_policy(store.clone(), config, cli.timeout, Some(path.clone()))
            .await
            .map_err(|e| CliError::Runtime(e.to_string()));
    let rows = match stack {
        Ok(stack) => {
            let rows = driver::run_governance(&stack.executor_url(), cli.timeout).await;
            stack.stop().await;
            rows
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&path);
    rows
}

/// `taskctl demo`.
pub async fn demo(cli: &Cli, args: &DemoArgs) -> Result<Exit> {
    let started = Instant::now();
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, both in-process services export their spans,
    // under the trace ids the table prints. Logs stay at warn so the table stays readable.
    let telemetry = if service_kit::telemetry::otlp_requested() {
        let t = service_kit::telemetry::init_with_filter(
            "taskrouter-demo",
            service_kit::telemetry::LogFormat::Text,
            "warn",
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        Some(t)
    } else {
        None
    };
    let store = match args.redis_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Store::Redis(url.to_string()),
        _ => {
            emit_err(&["no --redis-url: using the in-memory store (state is lost on exit)".into()]);
            Store::Memory
        }
    };
    let mut config = local_stack::executor_config(&store);
    // Throwaway bare repositories over file:// for the scenarios that name repositories,
    // so every task works on a real branch and the table shows where it ended.
    let repos = workspace::LocalRemotes::create(&scenarios::plan())
        .map_err(|e| CliError::Runtime(format!("demo repositories: {e}")))?;
    config.workspace = repos.as_ref().map(workspace::LocalRemotes::config);
    let stack = LocalStack::start(store.clone(), config, cli.timeout)
        .await
        .map_err(|e| match e {
            local_stack::Error::Config(_) => CliError::Usage(e.to_string()),
            _ => CliError::Runtime(e.to_string()),
        })?;
    let outcome =
        driver::run_scenarios(&stack.router_url(), &stack.executor_url(), cli.timeout).await;
    let (router_addr, executor_addr, store_name) =
        (stack.router_addr, stack.executor_addr, stack.store.name());
    stack.stop().await;
    // Governance: a second stack whose router gates deployments (the plan's scenarios
    // above run under the built-in policy, which has none).
    let governance = governance(&store, cli).await;
    let store = store_name;
    if let Some(t) = telemetry {
        t.shutdown();
    }
    let (mut rows, policy_version) = outcome?;
    rows.extend(governance?);
    let failed: Vec<&scenarios::Outcome> = rows.iter().filter(|r| !r.failures.is_empty()).collect();
    if cli.json {
        emit_json(&Value::Array(
            rows.iter().map(render::demo_row_json).collect(),
        ));
    } else {
        emit(&render::demo_table(&rows));
    }
    let mut notes: Vec<String> = failed
        .iter()
        .map(|r| format!("FAIL {}: {}", r.task_id, r.failures.join("; ")))
        .collect();
    notes.push(format!(
        "{} of {} scenarios ended as the plan expects ({:.2}s; router {router_addr}, executor {executor_addr}, {store} store, policy {policy_version})",
        rows.len() - failed.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    if cli.json {
        emit_err(&notes);
    } else {
        emit(&(notes.join("\n") + "\n"));
    }
    Ok(if failed.is_empty() {
        Exit::Ok
    } else {
        Exit::Runtime
    })
}
