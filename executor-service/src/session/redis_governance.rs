//! The Redis side of spend reservations and approval deadlines (layout and cross-slot
//! order in [`super::governance`]). Each script touches the keys of one slot only.

use super::governance::{
    Refusal, Reservation, SpendOutcome, SpendRequest, TENANT_DAY_TTL, TaskSpend, TenantHold,
    TenantSpend, epoch_ms,
};
use super::redis_store::RedisStore;
use crate::error::{Error, Result};
use redis::Script;
use std::sync::LazyLock;
use std::time::SystemTime;

/// KEYS: spend, lease. ARGV: owner, rid, min_amount, limit, tenant_ref.
/// Returns `{1, spent, amount}` reserved, `{-1, spent, amount}` over the task budget,
/// `{-2, 0, 0}` lease not held.
static RESERVE_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {-2, 0, 0}
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local maxcall = tonumber(redis.call('HGET', KEYS[1], 'maxcall') or '0')
local amount = math.max(tonumber(ARGV[3]), maxcall)
local limit = tonumber(ARGV[4])
if limit > 0 and spent + held + amount > limit then
  return {-1, spent, amount}
end
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HSET', KEYS[1], 'r:' .. ARGV[2], amount, 'o:' .. ARGV[2], ARGV[1], 't:' .. ARGV[2], ARGV[5])
return {1, spent, amount}
"#,
    )
});

/// KEYS: spend. ARGV: rid, actual. Drops the reservation (if still open) and adds the
/// actual cost to `spent` and `maxcall`.
static SETTLE_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local a = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if a then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(a))
  redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1], 'o:' .. ARGV[1], 't:' .. ARGV[1])
end
local actual = tonumber(ARGV[2])
if actual > 0 then
  redis.call('HINCRBY', KEYS[1], 'spent', actual)
  if actual > tonumber(redis.call('HGET', KEYS[1], 'maxcall') or '0') then
    redis.call('HSET', KEYS[1], 'maxcall', actual)
  end
end
return 1
"#,
    )
});

/// KEYS: spend. ARGV: owner. Drops every reservation owned by anyone else; returns
/// `{rid, tenant_ref, ...}` of the dropped ones.
static RECONCILE_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 'o:' and all[i + 1] ~= ARGV[1] then
    local rid = string.sub(f, 3)
    local a = redis.call('HGET', KEYS[1], 'r:' .. rid)
    if a then redis.call('HINCRBY', KEYS[1], 'held', -tonumber(a)) end
    local t = redis.call('HGET', KEYS[1], 't:' .. rid) or ''
    redis.call('HDEL', KEYS[1], 'r:' .. rid, 'o:' .. rid, 't:' .. rid)
    table.insert(out, rid)
    table.insert(out, t)
  end
end
return out
"#,
    )
});

/// Drops the tenant's expired holds (shared by the tenant scripts).
const DROP_EXPIRED: &str = r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, rid in ipairs(expired) do
  local a = redis.call('HGET', KEYS[1], 'r:' .. rid)
  if a then
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(a))
    redis.call('HDEL', KEYS[1], 'r:' .. rid)
  end
  redis.call('ZREM', KEYS[2], rid)
end
"#;

/// KEYS: tenant day hash, its holds. ARGV: now_ms, rid, amount, limit, hold_ttl_ms,
/// key_ttl_ms. Returns `{1, spent}` held or `{-1, spent}` over the tenant's limit.
static RESERVE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP_EXPIRED}
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local amount = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if limit > 0 and spent + held + amount > limit then
  return {{-1, spent}}
end
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HSET', KEYS[1], 'r:' .. ARGV[2], amount)
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[5]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {{1, spent}}
"#
    ))
});

/// KEYS: tenant day hash, its holds. ARGV: now_ms, rid, actual, key_ttl_ms. Drops the
/// hold (if still open) and adds the actual cost.
static SETTLE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP_EXPIRED}
local a = redis.call('HGET', KEYS[1], 'r:' .. ARGV[2])
if a then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(a))
  redis.call('HDEL', KEYS[1], 'r:' .. ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"#
    ))
});

/// KEYS: tenant day hash, its holds. ARGV: now_ms. Returns `{spent, held}`.
static READ_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP_EXPIRED}
return {{tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'held') or '0')}}
"#
    ))
});

fn tenant_keys(prefix: &str, tenant: &str, day: &str) -> (String, String) {
    let hash = format!("{prefix}:tenant:{{{tenant}:{day}}}");
    let holds = format!("{hash}:holds");
    (hash, holds)
}

fn tenant_ref(t: &Option<TenantHold>) -> String {
    t.as_ref()
        .map(|t| format!("{}|{}", t.tenant, t.day))
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

impl RedisStore {
    fn deadlines_key(&self) -> String {
        format!("{}:approval:deadlines", self.prefix())
    }

    async fn tenant_settle(&self, tenant: &str, day: &str, rid: &str, actual: i64) -> Result<()> {
        let (hash, holds) = tenant_keys(self.prefix(), tenant, day);
        let mut conn = self.conn();
        let _: i64 = SETTLE_TENANT
            .key(&hash)
            .key(&holds)
            .arg(now_ms())
            .arg(rid)
            .arg(actual)
            .arg(TENANT_DAY_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn reserve_spend_redis(&self, req: &SpendRequest<'_>) -> Result<SpendOutcome> {
        let keys = self.keys(req.task_id);
        let mut conn = self.conn();
        let (code, spent, amount): (i64, i64, i64) = RESERVE_TASK
            .key(&keys.spend)
            .key(&keys.lease)
            .arg(req.owner)
            .arg(&req.reservation_id)
            .arg(req.min_amount)
            .arg(req.task_limit)
            .arg(tenant_ref(&req.tenant))
            .invoke_async(&mut conn)
            .await?;
        match code {
            -2 => return Ok(SpendOutcome::NotLeaseHolder),
            -1 => {
                return Ok(SpendOutcome::Refused {
                    by: Refusal::Task,
                    spent,
                    limit: req.task_limit,
                    amount,
                });
            }
            1 => {}
            _ => {
                return Err(Error::Internal(
                    "unexpected reply from the reserve script".into(),
                ));
            }
        }
        let reservation = Reservation {
            task_id: req.task_id.to_string(),
            id: req.reservation_id.clone(),
            amount,
            tenant: req.tenant.clone(),
        };
        let Some(t) = &req.tenant else {
            return Ok(SpendOutcome::Reserved(reservation));
        };
        let (hash, holds) = tenant_keys(self.prefix(), &t.tenant, &t.day);
        let tenant_result: redis::RedisResult<(i64, i64)> = RESERVE_TENANT
            .key(&hash)
            .key(&holds)
            .arg(now_ms())
            .arg(&req.reservation_id)
            .arg(amount)
            .arg(t.limit)
            .arg(req.hold_ttl.as_millis().max(1) as u64)
            .arg(TENANT_DAY_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match tenant_result {
            Ok((1, _)) => Ok(SpendOutcome::Reserved(reservation)),
            Ok((_, tenant_spent)) => {
                self.settle_task(&reservation, 0).await?;
                Ok(SpendOutcome::Refused {
                    by: Refusal::Tenant,
                    spent: tenant_spent,
                    limit: t.limit,
                    amount,
                })
            }
            Err(e) => {
                // Best effort: reconciliation releases it otherwise.
                let _ = self.settle_task(&reservation, 0).await;
                Err(e.into())
            }
        }
    }

    async fn settle_task(&self, r: &Reservation, actual: i64) -> Result<()> {
        let keys = self.keys(&r.task_id);
        let mut conn = self.conn();
        let _: i64 = SETTLE_TASK
            .key(&keys.spend)
            .arg(&r.id)
            .arg(actual)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn settle_spend_redis(&self, r: &Reservation, actual: i64) -> Result<()> {
        // Tenant first: the task record still names the hold until its own settle, so a
        // crash in between is repaired by reconciliation, never double counted by it.
        if let Some(t) = &r.tenant {
            self.tenant_settle(&t.tenant, &t.day, &r.id, actual).await?;
        }
        self.settle_task(r, actual).await
    }

    pub(super) async fn reconcile_spend_redis(&self, task_id: &str, owner: &str) -> Result<usize> {
        let keys = self.keys(task_id);
        let mut conn = self.conn();
        let dropped: Vec<String> = RECONCILE_TASK
            .key(&keys.spend)
            .arg(owner)
            .invoke_async(&mut conn)
            .await?;
        let mut n = 0;
        for pair in dropped.chunks(2) {
            n += 1;
            if let [rid, tref] = pair
                && let Some((tenant, day)) = tref.split_once('|')
            {
                self.tenant_settle(tenant, day, rid, 0).await?;
            }
        }
        Ok(n)
    }

    pub(super) async fn task_spend_redis(&self, task_id: &str) -> Result<TaskSpend> {
        let keys = self.keys(task_id);
        let mut conn = self.conn();
        let (spent, held, max_call): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(&keys.spend)
            .arg("spent")
            .arg("held")
            .arg("maxcall")
            .query_async(&mut conn)
            .await?;
        Ok(TaskSpend {
            spent: spent.unwrap_or(0),
            held: held.unwrap_or(0),
            max_call: max_call.unwrap_or(0),
        })
    }

    pub(super) async fn tenant_spend_redis(&self, tenant: &str, day: &str) -> Result<TenantSpend> {
        let (hash, holds) = tenant_keys(self.prefix(), tenant, day);
        let mut conn = self.conn();
        let (spent, held): (i64, i64) = READ_TENANT
            .key(&hash)
            .key(&holds)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(TenantSpend { spent, held })
    }

    pub(super) async fn set_deadline_redis(&self, task_id: &str, at_ms: i64) -> Result<()> {
        let mut conn = self.conn();
        let _: i64 = redis::cmd("ZADD")
            .arg(self.deadlines_key())
            .arg(at_ms)
            .arg(task_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn clear_deadline_redis(&self, task_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.deadlines_key())
            .arg(task_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn due_deadlines_redis(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.deadlines_key())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(ids)
    }
}
