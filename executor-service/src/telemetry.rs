//! The executor's Prometheus metrics, named in one place. Labels carry codes and
//! enum names only, never task data.

use std::time::Duration;

/// Records one checkpoint write's latency.
pub fn checkpoint_latency(d: Duration, ok: bool) {
    metrics::histogram!("taskrouter_checkpoint_duration_seconds", "result" => if ok { "ok" } else { "error" })
        .record(d.as_secs_f64());
}

/// Counts a retried checkpoint write.
pub fn checkpoint_retry() {
    metrics::counter!("taskrouter_checkpoint_retries_total").increment(1);
}

/// Counts a finished task by outcome and the path that ran it, and records its cost.
pub fn task_finished(outcome: &'static str, path: &'static str, cost_usd: f64) {
    metrics::counter!("taskrouter_tasks_total", "outcome" => outcome, "path" => path).increment(1);
    metrics::histogram!("taskrouter_task_cost_usd", "path" => path).record(cost_usd);
}

/// Counts one agent iteration.
pub fn iteration(path: &'static str, role_kind: &'static str) {
    metrics::counter!("taskrouter_iterations_total", "path" => path, "role" => role_kind)
        .increment(1);
}

/// Counts a fallback from the team path by cause.
pub fn fallback(cause: &'static str) {
    metrics::counter!("taskrouter_fallbacks_total", "cause" => cause).increment(1);
}

/// Counts a routing outcome as seen by the executor.
pub fn routed(decision: &'static str, source: &'static str) {
    metrics::counter!("taskrouter_executor_routing_total", "decision" => decision, "source" => source)
        .increment(1);
}

/// Counts queue entries reclaimed from dead consumers.
pub fn reclaimed(n: usize) {
    metrics::counter!("taskrouter_queue_reclaims_total").increment(n as u64);
}

/// Counts redeliveries of a queue entry, by whether the previous delivery made progress
/// (a checkpoint after its start). Only `progress="no"` ones count toward dead-lettering.
pub fn redelivered(progressed: bool) {
    let progress = if progressed { "yes" } else { "no" };
    metrics::counter!("taskrouter_queue_redeliveries_total", "progress" => progress).increment(1);
}

/// Counts dead-lettered tasks.
pub fn dead_lettered() {
    metrics::counter!("taskrouter_dead_letters_total").increment(1);
}

/// Counts a state write whose index update failed (List lags for that task until its
/// next write or `--rebuild-indexes`).
pub fn index_write_failed() {
    metrics::counter!("taskrouter_index_write_failures_total").increment(1);
}

/// Sets the queue depth gauges.
pub fn queue_depth(length: u64, pending: u64) {
    metrics::gauge!("taskrouter_queue_length").set(length as f64);
    metrics::gauge!("taskrouter_queue_pending").set(pending as f64);
}

/// Records one agent call (an iteration, retries included).
pub fn agent_call(d: Duration, ok: bool) {
    metrics::histogram!("taskrouter_agent_call_duration_seconds", "result" => if ok { "ok" } else { "error" })
        .record(d.as_secs_f64());
}

/// Sets whether this executor reports SERVING (1) or NOT_SERVING (0).
pub fn serving(up: bool) {
    metrics::gauge!("taskrouter_serving").set(if up { 1.0 } else { 0.0 });
}

/// Registers the unlabelled counters at zero, so rates and alerts over them work before
/// their first increment, and the serving gauge as NOT_SERVING until the store answers.
pub fn register() {
    metrics::counter!("taskrouter_dead_letters_total").increment(0);
    metrics::counter!("taskrouter_checkpoint_retries_total").increment(0);
    metrics::counter!("taskrouter_queue_reclaims_total").increment(0);
    metrics::counter!("taskrouter_index_write_failures_total").increment(0);
    serving(false);
}

/// Adds one agent call's cost to the spend by tenant and path.
pub fn spend(tenant: &str, path: &'static str, usd: f64) {
    metrics::counter!("taskrouter_spend_micro_usd_total", "tenant" => tenant.to_string(), "path" => path)
        .increment((usd * 1e6).round().max(0.0) as u64);
}

/// Counts a task stopped by a budget, by budget kind (`task`, `tenant`).
pub fn budget_stop(kind: &'static str) {
    metrics::counter!("taskrouter_budget_stops_total", "kind" => kind).increment(1);
}

/// Counts an approval gate event (`requested`, `approved`, `rejected`) by gate.
pub fn approval(gate: &'static str, event: &'static str) {
    metrics::counter!("taskrouter_approvals_total", "gate" => gate, "event" => event).increment(1);
}
