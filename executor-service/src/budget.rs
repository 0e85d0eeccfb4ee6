//! Spend budgets of a run: before every agent call a reservation (at least
//! `--agent-max-call-cost`, more once the task has seen a costlier call) is held against
//! the task's budget and its tenant's daily budget; after the call the actual cost is
//! settled and the rest released.
//!
//! Overshoot bound: a reservation is only granted if it fits, and each agent call holds
//! exactly one, so spend exceeds a budget only by calls that cost more than they
//! reserved. With `P` calls in flight at once (1 on the single path, up to
//! `--team-max-parallel` specialists on the team path), `r` the reservation amount and
//! `c` the costliest call: spend ≤ budget + P·max(0, c − r). Since `r` grows to the
//! largest call seen, that excess happens at most once per new record call cost; with
//! `--agent-max-call-cost` at or above every call's cost the budget is never exceeded.
//! The same bound holds for a tenant, with `P` the calls in flight across every replica.

use crate::session::SessionStore;
use crate::session::governance::{
    Refusal, Reservation, SpendOutcome, SpendRequest, TenantHold, micros_to_usd, usd_to_micros,
    utc_day,
};
use std::time::{Duration, SystemTime};
use taskrouter_proto::v1::{BudgetKind, SessionState, Task};

/// Largest budget a request may set, in USD (micro-dollar sums stay exact).
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;

/// The task label naming its tenant (as the router's policy reads it).
pub use crate::session::listing::TENANT_LABEL;

/// Why a budget stopped a task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetStop {
    /// Which budget.
    pub kind: BudgetKind,
    /// What was already spent against it, USD.
    pub spent_usd: f64,
    /// Its limit, USD.
    pub limit_usd: f64,
}

/// What a run reserves against: fixed when the run starts.
#[derive(Clone, Debug)]
pub struct BudgetScope {
    /// The task.
    pub task_id: String,
    /// The run's lease owner token.
    pub owner: String,
    /// The task's budget, micro-dollars (0 = none).
    pub task_limit: i64,
    /// The tenant and its daily limit in micro-dollars (0 = none), if the task has one.
    pub tenant: Option<(String, i64)>,
    /// Smallest reservation, micro-dollars.
    pub min_call: i64,
    /// How long a tenant hold lives unsettled.
    pub hold_ttl: Duration,
}

/// Checks a requested budget: `Err` says what is wrong with it.
pub fn check_budget(usd: f64) -> Result<(), String> {
    if !usd.is_finite() || usd <= 0.0 || usd > MAX_BUDGET_USD {
        return Err(format!(
            "must be finite, > 0 and at most {MAX_BUDGET_USD} (leave it unset for the policy's default)"
        ));
    }
    Ok(())
}

/// Whether `name` can be a tenant: 1..=64 of `A-Z a-z 0-9 . _ -` (it is part of a key).
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl BudgetScope {
    /// The scope of a run of `state` (task `task`) under the lease `owner`.
    pub fn of(
        state: &SessionState,
        task: &Task,
        owner: &str,
        min_call_usd: f64,
        hold_ttl: Duration,
    ) -> Self {
        let analysis = state.analysis.clone().unwrap_or_default();
        let label = task
            .labels
            .get(TENANT_LABEL)
            .filter(|t| valid_tenant_name(t))
            .cloned();
        // The router names the tenant; without a router the label alone (no limit known).
        let tenant = if valid_tenant_name(&analysis.tenant) {
            Some((
                analysis.tenant.clone(),
                usd_to_micros(analysis.tenant_usd_per_day),
            ))
        } else {
            label.map(|t| (t, 0))
        };
        Self {
            task_id: state.task_id.clone(),
            owner: owner.to_string(),
            task_limit: usd_to_micros(state.budget_usd),
            tenant,
            min_call: usd_to_micros(min_call_usd).max(1),
            hold_ttl,
        }
    }

    /// Whether agent calls must hold a reservation: a task budget or a tenant applies.
    /// Without either nothing can be refused, so calls reserve nothing and their cost
    /// is settled by the checkpoint that records them (one round trip fewer per call).
    pub fn needs_reservation(&self) -> bool {
        self.task_limit > 0 || self.tenant.is_some()
    }

    /// Reserves one call's worth of spend.
    pub async fn reserve(&self, store: &dyn SessionStore) -> crate::Result<SpendOutcome> {
        let req = SpendRequest {
            task_id: &self.task_id,
            owner: &self.owner,
            reservation_id: uuid::Uuid::new_v4().simple().to_string(),
            min_amount: self.min_call,
            task_limit: self.task_limit,
            tenant: self.tenant.as_ref().map(|(tenant, limit)| TenantHold {
                tenant: tenant.clone(),
                day: utc_day(SystemTime::now()),
                limit: *limit,
            }),
            hold_ttl: self.hold_ttl,
        };
        store.reserve_spend(&req).await
    }

    /// The tenant name, for metrics ("none" without one).
    pub fn tenant_name(&self) -> &str {
        self.tenant.as_ref().map_or("none", |(t, _)| t.as_str())
    }
}

/// The stop a refusal means.
pub fn stop_of(by: Refusal, spent: i64, limit: i64) -> BudgetStop {
    BudgetStop {
        kind: match by {
            Refusal::Task => BudgetKind::Task,
            Refusal::Tenant => BudgetKind::Tenant,
        },
        spent_usd: micros_to_usd(spent),
        limit_usd: micros_to_usd(limit),
    }
}

/// Settles `r` with `cost_usd` (best effort: a reservation left open is released by the
/// next lease holder, and a tenant hold expires).
pub async fn settle(store: &dyn SessionStore, r: &Reservation, cost_usd: f64) {
    if let Err(e) = store.settle_spend(r, usd_to_micros(cost_usd)).await {
        tracing::warn!(task_id = %r.task_id, error = %e, "spend settlement failed; the reservation is released later");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_must_be_positive_finite_and_bounded() {
        assert!(check_budget(0.5).is_ok());
        assert!(check_budget(MAX_BUDGET_USD).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e7] {
            assert!(check_budget(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_names_fit_in_a_key() {
        assert!(valid_tenant_name("acme-corp.eu_1"));
        assert!(!valid_tenant_name(""));
        assert!(!valid_tenant_name("a}b"));
        assert!(!valid_tenant_name(&"x".repeat(65)));
    }
}
