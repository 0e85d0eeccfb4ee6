//! Spend reservations and approval deadlines, as the store keeps them (the policy side
//! of both lives in `crate::budget` and `crate::approval`).
//!
//! Amounts are integer micro-dollars, so sums in Redis are exact.
//!
//! Keys (Redis):
//! - `<prefix>:{id}:spend` — hash in the task's slot: `spent`, `held`, `maxcall` and, per
//!   open reservation `<rid>`, `r:<rid>` (amount), `o:<rid>` (lease owner token) and
//!   `t:<rid>` (`<tenant>|<day>` or empty). Expires with the task's archive.
//! - `<prefix>:tenant:{<tenant>:<day>}` — hash: `spent`, `held`, `r:<rid>`; and
//!   `…:holds`, a sorted set of reservation ids scored by their expiry (ms). Both
//!   expire two days after their UTC day's last use.
//! - `<prefix>:approval:deadlines` — sorted set of waiting task ids scored by the
//!   gate's deadline (ms since the epoch).
//!
//! Cross-slot order of one reservation (the task and the tenant hash sit in different
//! Redis Cluster slots, so no single script may touch both): the task step first (it
//! checks the lease and records the reservation with the tenant it is about to hold),
//! then the tenant step; if the tenant refuses, the task reservation is released. A
//! worker that dies between or after the steps leaves a task reservation naming its
//! tenant hold: the next lease holder's [`reconcile`](super::SessionStore::reconcile_spend)
//! drops it and releases the tenant hold too; a tenant hold whose task is never
//! resumed expires after the hold TTL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One micro-dollar is 1e-6 USD.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

/// USD to micro-dollars (rounded up, so a reservation never undershoots).
pub fn usd_to_micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    (usd * MICROS_PER_USD).ceil().min(i64::MAX as f64) as i64
}

/// Micro-dollars to USD.
pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// The UTC calendar day of `at`, `YYYY-MM-DD`.
pub fn utc_day(at: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_seconds(at).to_string();
    s.truncate(10);
    s
}

/// The tenant side of a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantHold {
    /// Tenant name (validated: `A-Z a-z 0-9 . _ -`, at most 64 bytes).
    pub tenant: String,
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Limit for the day in micro-dollars; 0 = none (spend is still counted).
    pub limit: i64,
}

/// A request to reserve spend before one agent call.
#[derive(Clone, Debug)]
pub struct SpendRequest<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The lease owner token of the caller (the reservation is refused without the lease).
    pub owner: &'a str,
    /// Unique id of this reservation.
    pub reservation_id: String,
    /// Smallest amount to reserve (micro-dollars); the task's largest settled call
    /// raises it.
    pub min_amount: i64,
    /// The task's budget in micro-dollars; 0 = none.
    pub task_limit: i64,
    /// The tenant to hold against, if the task has one.
    pub tenant: Option<TenantHold>,
    /// How long a tenant hold lives without being settled.
    pub hold_ttl: Duration,
}

/// A reservation that fitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The task.
    pub task_id: String,
    /// Its id.
    pub id: String,
    /// Amount held, micro-dollars.
    pub amount: i64,
    /// The tenant hold, if any.
    pub tenant: Option<TenantHold>,
}

/// Which budget refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The task's budget.
    Task,
    /// The tenant's budget for the day.
    Tenant,
}

/// The outcome of a reservation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpendOutcome {
    /// It fitted.
    Reserved(Reservation),
    /// It did not fit.
    Refused {
        /// Which budget.
        by: Refusal,
        /// Spend already settled against it, micro-dollars.
        spent: i64,
        /// Its limit, micro-dollars.
        limit: i64,
        /// The amount that did not fit.
        amount: i64,
    },
    /// The caller no longer holds the task's lease.
    NotLeaseHolder,
}

/// A task's spend as the store records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSpend {
    /// Settled spend, micro-dollars.
    pub spent: i64,
    /// Open reservations, micro-dollars.
    pub held: i64,
    /// Largest settled call, micro-dollars.
    pub max_call: i64,
}

/// A tenant's spend for one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantSpend {
    /// Settled spend, micro-dollars.
    pub spent: i64,
    /// Unexpired open holds, micro-dollars.
    pub held: i64,
}

/// How long a tenant's day keys are kept after their last use.
pub const TENANT_DAY_TTL: Duration = Duration::from_secs(2 * 24 * 3600);
