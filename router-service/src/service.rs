//! The `taskrouter.v1.Router` gRPC service: request validation, evaluation with the policy
//! in force, metrics and one log event per decision.
//!
//! Descriptions may hold patient data or credentials: only their size is ever logged.

use crate::error::Error;
use crate::reload::PolicyStore;
use crate::shadow::{SHADOW_DECISIONS_METRIC, SHADOW_REASON_DIFFERENCES_METRIC, differing_reasons};
use service_kit::validation::{TaskLimits, Violations, check_task};
use std::sync::Arc;
use taskrouter_proto::v1::router_server::Router;
use taskrouter_proto::v1::{
    GetPolicyRequest, GetPolicyResponse, ReasonCode, RouteRequest, RouteResponse, RoutingAnalysis,
    RoutingDecision, Task,
};
use tonic::{Request, Response, Status};

/// Descriptions up to this size are evaluated on the async worker (well under 100 µs);
/// longer ones on the blocking pool.
pub const INLINE_EVALUATION_BYTES: usize = 16 * 1024;

/// Counter of routing decisions, labelled `decision` and `reason` (one increment per reason).
pub const DECISIONS_METRIC: &str = "taskrouter_routing_decisions_total";

/// The Router service over a swappable policy.
#[derive(Clone, Debug)]
pub struct RouterService {
    store: Arc<PolicyStore>,
    shadow: Option<Arc<PolicyStore>>,
}

impl RouterService {
    /// A service deciding with whatever policy `store` holds at each call.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        Self {
            store,
            shadow: None,
        }
    }

    /// Also evaluates every task with the policy `shadow` holds (see [`crate::shadow`]).
    pub fn with_shadow(mut self, shadow: Option<Arc<PolicyStore>>) -> Self {
        self.shadow = shadow;
        self
    }

    /// Decides `request`; `span` is the request's `route` span, which gets the decision.
    async fn route_task(
        &self,
        request: RouteRequest,
        span: &tracing::Span,
    ) -> Result<RouteResponse, Error> {
        // One version for the whole decision, even if a reload lands meanwhile.
        let policy = self.store.current();
        if let Err(e) = validate_task(request.task.as_ref(), policy.engine.max_description_bytes())
        {
            if let Error::InvalidRequest(v) = &e {
                let fields: Vec<&str> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
                let id = request.task.as_ref().map_or("", |t| t.id.as_str());
                tracing::info!(task.id = %id, fields = %fields.join(","), "route request rejected");
            }
            return Err(e);
        }
        let include_shadow = request.include_shadow;
        let task = request.task.unwrap_or_default();
        let shadow = self.shadow.as_ref().map(|s| s.current());
        let evaluate = move |task: &Task| match &shadow {
            Some(shadow) => {
                let (live, candidate) = policy.engine.evaluate_pair(&shadow.engine, task);
                (live, Some(candidate))
            }
            None => (policy.engine.evaluate(task), None),
        };
        let (analysis, shadow) = if task.description.len() > INLINE_EVALUATION_BYTES {
            // Scanning a long description takes milliseconds: keep it off the async workers.
            let (task, decided) = tokio::task::spawn_blocking(move || {
                let decided = evaluate(&task);
                (task, decided)
            })
            .await
            .map_err(|e| Error::Internal(format!("evaluation task failed: {e}")))?;
            record(&task, &decided.0, span);
            decided
        } else {
            let decided = evaluate(&task);
            record(&task, &decided.0, span);
            decided
        };
        if let Some(shadow) = &shadow {
            record_shadow(&analysis, shadow);
        }
        Ok(RouteResponse {
            analysis: Some(analysis),
            shadow: shadow.filter(|_| include_shadow),
        })
    }

    fn policy(&self) -> GetPolicyResponse {
        let p = self.store.current();
        GetPolicyResponse {
            version: p.engine.version().to_string(),
            policy: Some(p.engine.to_proto()),
            source: p.source.to_string(),
            loaded_at: Some(prost_types::Timestamp::from(p.loaded_at)),
        }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<RouteRequest>,
    ) -> Result<Response<RouteResponse>, Status> {
        use tracing::Instrument as _;
        let req = request.into_inner();
        let (id, bytes) = req
            .task
            .as_ref()
            .map(|t| (t.id.as_str(), t.description.len()))
            .unwrap_or_default();
        // Decision attributes land on this span; the description itself never does. It
        // is for traces only: the decision line repeats its fields in the log.
        let span = tracing::info_span!(
            target: "router_service::trace_only",
            "route",
            task.id = %id,
            task.description_bytes = bytes,
            route.decision = tracing::field::Empty,
            route.reasons = tracing::field::Empty,
            route.rollout_bucket = tracing::field::Empty,
            route.multi_agent_recommended = tracing::field::Empty,
            policy.version = tracing::field::Empty,
        );
        let fields = span.clone();
        self.route_task(req, &fields)
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_policy(
        &self,
        _request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        Ok(Response::new(self.policy()))
    }
}

/// Checks a Route request's task with the limits both services share
/// ([`TaskLimits`] defaults) and the policy's description limit; every problem becomes one
/// BadRequest field violation.
pub fn validate_task(task: Option<&Task>, max_description_bytes: u64) -> Result<&Task, Error> {
    let mut v = Violations::new();
    let Some(task) = task else {
        v.add("task", "is required");
        return Err(Error::InvalidRequest(v));
    };
    let limits = TaskLimits {
        max_description_bytes: usize::try_from(max_description_bytes).unwrap_or(usize::MAX),
        ..TaskLimits::default()
    };
    check_task(&mut v, "task", task, &limits);
    if v.is_empty() {
        Ok(task)
    } else {
        Err(Error::InvalidRequest(v))
    }
}

/// Metric label of a decision.
pub fn decision_label(decision: i32) -> &'static str {
    match RoutingDecision::try_from(decision) {
        Ok(RoutingDecision::UseSingleAgent) => "single_agent",
        Ok(RoutingDecision::UseMultiAgent) => "multi_agent",
        _ => "unspecified",
    }
}

/// Metric label of a reason code (the enum name without its prefix, lower case).
pub fn reason_label(code: i32) -> &'static str {
    match ReasonCode::try_from(code) {
        Ok(ReasonCode::HighComplexity) => "high_complexity",
        Ok(ReasonCode::HighValue) => "high_value",
        Ok(ReasonCode::ComplianceSensitive) => "compliance_sensitive",
        Ok(ReasonCode::Deployment) => "deployment",
        Ok(ReasonCode::CrossRepo) => "cross_repo",
        Ok(ReasonCode::SimpleTask) => "simple_task",
        Ok(ReasonCode::MultiAgentDisabled) => "multi_agent_disabled",
        Ok(ReasonCode::OutsideRollout) => "outside_rollout",
        Ok(ReasonCode::RouterUnavailable) => "router_unavailable",
        Ok(ReasonCode::ForcedSingleAgent) => "forced_single_agent",
        Ok(ReasonCode::Unspecified) | Err(_) => "unspecified",
    }
}

/// Counts one live/shadow pair and every reason code only one side gave.
fn record_shadow(live: &RoutingAnalysis, shadow: &RoutingAnalysis) {
    metrics::counter!(
        SHADOW_DECISIONS_METRIC,
        "live" => decision_label(live.decision),
        "shadow" => decision_label(shadow.decision)
    )
    .increment(1);
    for (code, side) in differing_reasons(live, shadow) {
        metrics::counter!(
            SHADOW_REASON_DIFFERENCES_METRIC,
            "reason" => reason_label(code),
            "side" => side
        )
        .increment(1);
    }
}

/// Records the decision on the route span in one call: five separate `record`s each
/// looked the span up, locked its exported data and dispatched to every layer again.
fn record_decision_on_span(
    span: &tracing::Span,
    decision: &str,
    reasons: &str,
    rollout_bucket: u32,
    multi_agent_recommended: bool,
    policy_version: &str,
) {
    // A disabled span (no exporter: the route span is traces only) records nothing.
    if span.is_disabled() {
        return;
    }
    let Some(meta) = span.metadata() else {
        return;
    };
    let fields = meta.fields();
    let (Some(d), Some(r), Some(b), Some(m), Some(v)) = (
        fields.field("route.decision"),
        fields.field("route.reasons"),
        fields.field("route.rollout_bucket"),
        fields.field("route.multi_agent_recommended"),
        fields.field("policy.version"),
    ) else {
        return;
    };
    span.record_all(&fields.value_set(&[
        (&d, Some(&decision as &dyn tracing::Value)),
        (&r, Some(&reasons as &dyn tracing::Value)),
        (&b, Some(&rollout_bucket as &dyn tracing::Value)),
        (&m, Some(&multi_agent_recommended as &dyn tracing::Value)),
        (&v, Some(&policy_version as &dyn tracing::Value)),
    ]));
}

fn record(task: &Task, analysis: &RoutingAnalysis, span: &tracing::Span) {
    let decision = decision_label(analysis.decision);
    // Joined once, for the span and the decision line.
    let mut reasons = String::new();
    for r in &analysis.reasons {
        let reason = reason_label(r.code);
        metrics::counter!(DECISIONS_METRIC, "decision" => decision, "reason" => reason)
            .increment(1);
        if !reasons.is_empty() {
            reasons.push(',');
        }
        reasons.push_str(reason);
    }
    // The `route` span is on only when traces are exported; otherwise nothing reads it.
    record_decision_on_span(
        span,
        decision,
        &reasons,
        analysis.rollout_bucket,
        analysis.multi_agent_recommended,
        &analysis.policy_version,
    );
    tracing::info!(
        task.id = %task.id,
        task.description_bytes = task.description.len(),
        decision,
        reasons = %reasons,
        multi_agent_recommended = analysis.multi_agent_recommended,
        rollout_bucket = analysis.rollout_bucket,
        score = analysis.score,
        policy.version = %analysis.policy_version,
        "task routed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::Complexity;

    fn valid() -> Task {
        Task {
            id: "T-1".into(),
            description: "Fix typo".into(),
            complexity: Complexity::Low as i32,
            estimated_value_usd: 10.0,
            repositories: vec!["org/a".into()],
            labels: [("team".to_string(), "core".to_string())].into(),
        }
    }

    fn fields(t: &Task, max: u64) -> Vec<String> {
        match validate_task(Some(t), max) {
            Ok(_) => Vec::new(),
            Err(Error::InvalidRequest(v)) => v.as_slice().iter().map(|f| f.field.clone()).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_valid_task_passes() {
        assert!(fields(&valid(), 1024).is_empty());
    }

    #[test]
    fn a_missing_task_names_the_task_field() {
        match validate_task(None, 10) {
            Err(Error::InvalidRequest(v)) => assert_eq!(v.as_slice()[0].field, "task"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_violation_is_listed_at_once() {
        let mut t = valid();
        t.id = String::new();
        t.description = "x".repeat(11);
        t.complexity = 42;
        t.estimated_value_usd = -1.0;
        t.repositories = vec!["ok".into(), " ".into()];
        t.labels = [(String::new(), "v".to_string())].into();
        assert_eq!(
            fields(&t, 10),
            [
                "task.id",
                "task.description",
                "task.complexity",
                "task.estimated_value_usd",
                "task.repositories[1]",
                "task.labels",
            ]
        );
    }

    #[test]
    fn non_finite_values_and_unspecified_complexity_are_rejected() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut t = valid();
            t.estimated_value_usd = value;
            assert_eq!(fields(&t, 100), ["task.estimated_value_usd"]);
        }
        let mut t = valid();
        t.complexity = Complexity::Unspecified as i32;
        assert_eq!(fields(&t, 100), ["task.complexity"]);
    }

    #[test]
    fn absurd_repository_and_label_counts_are_rejected() {
        let l = TaskLimits::default();
        let mut t = valid();
        t.repositories = (0..=l.max_repositories).map(|i| format!("r{i}")).collect();
        assert_eq!(fields(&t, 100), ["task.repositories"]);
        let mut t = valid();
        t.repositories = vec!["r".repeat(l.max_item_bytes + 1)];
        assert_eq!(fields(&t, 100), ["task.repositories[0]"]);
        let mut t = valid();
        t.labels = (0..=l.max_labels)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(fields(&t, 100), ["task.labels"]);
        let mut t = valid();
        t.labels = [("k".to_string(), "v".repeat(l.max_item_bytes + 1))].into();
        assert_eq!(fields(&t, 100), ["task.labels"]);
    }

    #[test]
    fn the_description_limit_comes_from_the_policy() {
        let mut t = valid();
        t.description = "x".repeat(101);
        assert_eq!(fields(&t, 100), ["task.description"]);
        assert!(fields(&t, 101).is_empty());
    }

    #[test]
    fn labels_cover_every_reason_code() {
        for code in 1..=10 {
            assert_ne!(reason_label(code), "unspecified", "{code}");
        }
        assert_eq!(
            reason_label(ReasonCode::OutsideRollout as i32),
            "outside_rollout"
        );
        assert_eq!(
            decision_label(RoutingDecision::UseMultiAgent as i32),
            "multi_agent"
        );
    }
}
