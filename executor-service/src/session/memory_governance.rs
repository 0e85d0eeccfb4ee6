//! The in-memory twin of `redis_governance`: the same reservation, settlement,
//! reconciliation and deadline semantics, in one process.

use super::governance::{Refusal, Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantSpend};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(Debug)]
struct Open {
    amount: i64,
    owner: String,
    tenant: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct TaskLedger {
    spent: i64,
    held: i64,
    max_call: i64,
    open: HashMap<String, Open>,
}

#[derive(Debug, Default)]
struct TenantLedger {
    spent: i64,
    holds: HashMap<String, (i64, Instant)>,
}

impl TenantLedger {
    fn drop_expired(&mut self, now: Instant) {
        self.holds.retain(|_, (_, until)| *until > now);
    }

    fn held(&self) -> i64 {
        self.holds.values().map(|(a, _)| a).sum()
    }

    fn settle(&mut self, rid: &str, actual: i64, now: Instant) {
        self.drop_expired(now);
        self.holds.remove(rid);
        self.spent += actual.max(0);
    }
}

/// Spend ledgers and approval deadlines of a [`super::MemoryStore`].
#[derive(Debug, Default)]
pub(super) struct Ledger {
    tasks: HashMap<String, TaskLedger>,
    tenants: HashMap<(String, String), TenantLedger>,
    deadlines: HashMap<String, i64>,
}

impl Ledger {
    /// Reserves as the Redis scripts do; `lease_owner` is the task's current lease owner.
    pub(super) fn reserve(
        &mut self,
        req: &SpendRequest<'_>,
        lease_owner: Option<&str>,
        now: Instant,
    ) -> SpendOutcome {
        if lease_owner != Some(req.owner) {
            return SpendOutcome::NotLeaseHolder;
        }
        let task = self.tasks.entry(req.task_id.to_string()).or_default();
        let amount = req.min_amount.max(task.max_call);
        if req.task_limit > 0 && task.spent + task.held + amount > req.task_limit {
            return SpendOutcome::Refused {
                by: Refusal::Task,
                spent: task.spent,
                limit: req.task_limit,
                amount,
            };
        }
        if let Some(t) = &req.tenant {
            let tenant = self
                .tenants
                .entry((t.tenant.clone(), t.day.clone()))
                .or_default();
            tenant.drop_expired(now);
            if t.limit > 0 && tenant.spent + tenant.held() + amount > t.limit {
                return SpendOutcome::Refused {
                    by: Refusal::Tenant,
                    spent: tenant.spent,
                    limit: t.limit,
                    amount,
                };
            }
            tenant
                .holds
                .insert(req.reservation_id.clone(), (amount, now + req.hold_ttl));
        }
        task.held += amount;
        task.open.insert(
            req.reservation_id.clone(),
            Open {
                amount,
                owner: req.owner.to_string(),
                tenant: req
                    .tenant
                    .as_ref()
                    .map(|t| (t.tenant.clone(), t.day.clone())),
            },
        );
        SpendOutcome::Reserved(Reservation {
            task_id: req.task_id.to_string(),
            id: req.reservation_id.clone(),
            amount,
            tenant: req.tenant.clone(),
        })
    }

    pub(super) fn settle(&mut self, r: &Reservation, actual: i64, now: Instant) {
        if let Some(t) = &r.tenant {
            self.tenants
                .entry((t.tenant.clone(), t.day.clone()))
                .or_default()
                .settle(&r.id, actual, now);
        }
        let task = self.tasks.entry(r.task_id.clone()).or_default();
        if let Some(open) = task.open.remove(&r.id) {
            task.held -= open.amount;
        }
        if actual > 0 {
            task.spent += actual;
            task.max_call = task.max_call.max(actual);
        }
    }

    /// Adds spend settled by a checkpoint (calls made without a reservation).
    pub(super) fn settle_unreserved(&mut self, task_id: &str, total: i64, largest: i64) {
        if total > 0 {
            let task = self.tasks.entry(task_id.to_string()).or_default();
            task.spent += total;
            task.max_call = task.max_call.max(largest);
        }
    }

    pub(super) fn reconcile(&mut self, task_id: &str, owner: &str, now: Instant) -> usize {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return 0;
        };
        let stale: Vec<String> = task
            .open
            .iter()
            .filter(|(_, o)| o.owner != owner)
            .map(|(rid, _)| rid.clone())
            .collect();
        let mut tenants = Vec::new();
        for rid in &stale {
            if let Some(open) = task.open.remove(rid) {
                task.held -= open.amount;
                if let Some(t) = open.tenant {
                    tenants.push((t, rid.clone()));
                }
            }
        }
        for (key, rid) in tenants {
            if let Some(t) = self.tenants.get_mut(&key) {
                t.settle(&rid, 0, now);
            }
        }
        stale.len()
    }

    pub(super) fn task_spend(&self, task_id: &str) -> TaskSpend {
        self.tasks
            .get(task_id)
            .map(|t| TaskSpend {
                spent: t.spent,
                held: t.held,
                max_call: t.max_call,
            })
            .unwrap_or_default()
    }

    pub(super) fn tenant_spend(&mut self, tenant: &str, day: &str, now: Instant) -> TenantSpend {
        match self.tenants.get_mut(&(tenant.to_string(), day.to_string())) {
            Some(t) => {
                t.drop_expired(now);
                TenantSpend {
                    spent: t.spent,
                    held: t.held(),
                }
            }
            None => TenantSpend::default(),
        }
    }

    pub(super) fn set_deadline(&mut self, task_id: &str, at_ms: i64) {
        self.deadlines.insert(task_id.to_string(), at_ms);
    }

    pub(super) fn clear_deadline(&mut self, task_id: &str) {
        self.deadlines.remove(task_id);
    }

    pub(super) fn due(&self, now_ms: i64, limit: usize) -> Vec<String> {
        let by_time: BTreeMap<(i64, &String), ()> = self
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(id, at)| ((*at, id), ()))
            .collect();
        by_time
            .into_keys()
            .take(limit.max(1))
            .map(|(_, id)| id.clone())
            .collect()
    }
}
