//! Secondary indexes of the Redis store: what `List` reads.
//!
//! Layout (every key shares the hash tag `{index}`, so on Redis Cluster the whole index
//! lives in one slot, next to nothing else):
//! - `<prefix>:{index}:entry` — hash: task id -> [`IndexEntry`] JSON (what the task is
//!   indexed under, so an update can remove the old memberships);
//! - `<prefix>:{index}:all` — sorted set of every task id, scored by update time (ms);
//! - `<prefix>:{index}:st:<STATUS>`, `path:<PATH>`, `reason:<CODE>`, `tenant:<label>`,
//!   `policy:<version>` — the same, per attribute value;
//! - `<prefix>:{index}:st:<STATUS>:tenant:<label>` — the same, per status and tenant (for
//!   tasks with a tenant), so a status + tenant filter reads a page and its counts
//!   straight from these sets instead of walking the tenant's tasks;
//! - `<prefix>:{index}:st-tenant-ready` — present when every entry is in its status ×
//!   tenant set. An index write sets it when the entry hash is empty (a new index), and
//!   `--rebuild-indexes` sets it once it has dropped and refilled every index key (the
//!   drop is no transaction, so a write racing with it may have set it too early and had
//!   it dropped). An index written by an earlier version lacks it, and `List` then walks
//!   the tenant set instead: results are exact either way, only the speed waits for the
//!   rebuild. The rebuild belongs after the last executor of an earlier version has
//!   stopped: those neither add nor remove status × tenant memberships;
//! - `<prefix>:{index}:expiry` — archived task ids scored by their expiry time, so
//!   expired tasks leave every index (pruned by each List and a few by each archiving
//!   write: every expiry entry comes from one, so they keep pace; `List` skips an
//!   expired entry that is still there);
//! - `<prefix>:{index}:token-key` — random key that signs page tokens (shared by replicas).
//!
//! Every script here touches index keys only (one slot); the task's own keys live in the
//! slot of `{task_id}`. On standalone Redis the state scripts (create, checkpoint) run
//! [`INDEX_LUA`]'s `ix_put` themselves, so a state write and its index update are one
//! atomic round trip. On a Redis Cluster a script may touch one slot only, so a state
//! write is two calls there: the task script, then [`INDEX_PUT`] for that task, sent by
//! the same store call before it returns, so a change is listed before the RPC or
//! iteration that made it returns. The entry carries the task's version and an index
//! write never replaces a newer one, so the second call is idempotent and order-proof. A
//! crash between the two leaves the task listed as it was until its next write;
//! `--rebuild-indexes` repairs every task at once.
//!
//! A running task's checkpoint also names the entry it replaces ([`direct_update`]): when
//! the stored entry is exactly that JSON, the script moves the task between the sets that
//! change without decoding anything; otherwise `ix_put` works it out from the stored
//! entry. Entries are stored as the writer sent them whenever the script changes nothing
//! in them, so the writer can name them next time.

use super::listing::{Cursor, IndexEntry, ListQuery, TaskFilter};
use std::sync::LazyLock;

/// Lua helpers shared by every script that touches the index. `pfx` is the index key
/// prefix (`<prefix>:{index}:`).
pub const INDEX_LUA: &str = r#"
local function ix_del(pfx, id, e)
  redis.call('ZREM', pfx .. 'all', id)
  redis.call('ZREM', pfx .. 'st:' .. e.s, id)
  if e.p ~= '' then redis.call('ZREM', pfx .. 'path:' .. e.p, id) end
  for r in string.gmatch(e.r, '[^,]+') do redis.call('ZREM', pfx .. 'reason:' .. r, id) end
  if e.t and e.t ~= '' then
    redis.call('ZREM', pfx .. 'tenant:' .. e.t, id)
    redis.call('ZREM', pfx .. 'st:' .. e.s .. ':tenant:' .. e.t, id)
  end
  if e.y ~= '' then redis.call('ZREM', pfx .. 'policy:' .. e.y, id) end
  redis.call('ZREM', pfx .. 'expiry', id)
  redis.call('HDEL', pfx .. 'entry', id)
end
local function ix_put(pfx, id, e, as_sent)
  local raw = redis.call('HGET', pfx .. 'entry', id)
  local o = nil
  if raw then
    o = cjson.decode(raw)
    if tonumber(o.v) > tonumber(e.v) then return 0 end
    if e.t == nil then e.t = o.t end
  elseif redis.call('EXISTS', pfx .. 'entry') == 0 then
    -- An index without entries holds nothing written before the status x tenant sets
    -- existed, so from here on those sets cover every entry (`st-tenant-ready`, module doc).
    redis.call('SET', pfx .. 'st-tenant-ready', '1')
  end
  if e.t == nil then e.t = '' end
  if o then
    -- Only memberships that change are removed: a set the task stays in just gets the
    -- new score below (a checkpoint usually changes nothing but the update time).
    local ot = o.t or ''
    if o.s ~= e.s then redis.call('ZREM', pfx .. 'st:' .. o.s, id) end
    if o.p ~= '' and o.p ~= e.p then redis.call('ZREM', pfx .. 'path:' .. o.p, id) end
    if o.r ~= e.r then
      for r in string.gmatch(o.r, '[^,]+') do redis.call('ZREM', pfx .. 'reason:' .. r, id) end
    end
    if ot ~= '' and ot ~= e.t then redis.call('ZREM', pfx .. 'tenant:' .. ot, id) end
    if ot ~= '' and (ot ~= e.t or o.s ~= e.s) then
      redis.call('ZREM', pfx .. 'st:' .. o.s .. ':tenant:' .. ot, id)
    end
    if o.y ~= '' and o.y ~= e.y then redis.call('ZREM', pfx .. 'policy:' .. o.y, id) end
    if (tonumber(o.x) or 0) > 0 and e.x <= 0 then redis.call('ZREM', pfx .. 'expiry', id) end
  end
  redis.call('ZADD', pfx .. 'all', e.u, id)
  redis.call('ZADD', pfx .. 'st:' .. e.s, e.u, id)
  if e.p ~= '' then redis.call('ZADD', pfx .. 'path:' .. e.p, e.u, id) end
  for r in string.gmatch(e.r, '[^,]+') do redis.call('ZADD', pfx .. 'reason:' .. r, e.u, id) end
  if e.t ~= '' then
    redis.call('ZADD', pfx .. 'tenant:' .. e.t, e.u, id)
    redis.call('ZADD', pfx .. 'st:' .. e.s .. ':tenant:' .. e.t, e.u, id)
  end
  if e.y ~= '' then redis.call('ZADD', pfx .. 'policy:' .. e.y, e.u, id) end
  if e.x > 0 then redis.call('ZADD', pfx .. 'expiry', e.x, id) end
  redis.call('HSET', pfx .. 'entry', id, as_sent or cjson.encode(e))
  return 1
end
local function ix_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ix_prune(pfx, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', pfx .. 'expiry', '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', pfx .. 'entry', id)
    if raw then ix_del(pfx, id, cjson.decode(raw)) else redis.call('ZREM', pfx .. 'expiry', id) end
  end
  return #ids
end
"#;

/// The marker key (under the index prefix) saying every entry is in its status × tenant
/// set (`INDEX_LUA` spells the same name).
pub const ST_TENANT_READY: &str = "st-tenant-ready";

/// Expired entries an archiving write prunes in passing (List prunes more).
pub const PRUNE_PER_WRITE: u32 = 16;
/// Expired entries one List prunes before it counts.
pub const PRUNE_PER_LIST: u32 = 10_000;

/// KEYS: index entry hash. ARGV: task id, entry JSON, the task's version, archive TTL in
/// ms (0: not archived).
/// Indexes one task at `version` unless a newer version is indexed already (returns 1
/// when written, 0 when not); an archiving write (`ttl > 0`) also prunes a few expired
/// entries in passing.
pub static INDEX_PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{INDEX_LUA}
local pfx = string.sub(KEYS[1], 1, -6)
local e = cjson.decode(ARGV[2])
e.v = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
e.x = 0
if ttl <= 0 then return ix_put(pfx, ARGV[1], e) end
local now = ix_now()
e.x = now + ttl
local done = ix_put(pfx, ARGV[1], e)
ix_prune(pfx, now, {PRUNE_PER_WRITE})
return done
"#
    ))
});

/// KEYS: index entry hash. ARGV: filter JSON ([`FilterArgs`]), page size, cursor score
/// (empty for the first page), cursor id.
/// Returns `{counts, items, more}`: `counts` alternates status name and count (for the
/// counted statuses), `items` alternates task id and entry JSON (listing order).
pub static LIST: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{INDEX_LUA}
local pfx = string.sub(KEYS[1], 1, -6)
local f = cjson.decode(ARGV[1])
local page = tonumber(ARGV[2])
local cs = nil
if ARGV[3] ~= '' then cs = tonumber(ARGV[3]) end
local cid = ARGV[4]
local now = ix_now()
ix_prune(pfx, now, {PRUNE_PER_LIST})
local statuses = {{}}
for s in string.gmatch(f.st, '[^,]+') do statuses[#statuses + 1] = s end
local counted = {{}}
for s in string.gmatch(f.cs, '[^,]+') do counted[#counted + 1] = s end
local min = '-inf'
if f.ua then min = tostring(f.ua) end
local max = '+inf'
if f.ub then max = '(' .. tostring(f.ub) end
local hi = max
if cs and (not f.ub or cs < f.ub) then hi = tostring(cs) end

-- Statuses with a tenant read the status x tenant sets, which cover the tenant filter
-- exactly, once every entry is known to be in them (an index written before they
-- existed is not, until rebuilt: then the tenant set is walked as before).
local by_tenant = #statuses > 0 and f.t and f.t ~= ''
  and redis.call('EXISTS', pfx .. '{ST_TENANT_READY}') == 1
local skey = {{}}
for _, s in ipairs(statuses) do
  if by_tenant then skey[s] = 'st:' .. s .. ':tenant:' .. f.t else skey[s] = 'st:' .. s end
end

-- The smallest candidate set drives the walk; everything else is checked per entry.
local attrs = {{}}
if f.p then attrs[#attrs + 1] = 'path:' .. f.p end
if f.r then attrs[#attrs + 1] = 'reason:' .. f.r end
if f.t and not by_tenant then attrs[#attrs + 1] = 'tenant:' .. f.t end
if f.y then attrs[#attrs + 1] = 'policy:' .. f.y end
local driver, dsize = nil, nil
for _, k in ipairs(attrs) do
  local n = redis.call('ZCARD', pfx .. k)
  if not dsize or n < dsize then driver, dsize = {{k}}, n end
end
if #statuses > 0 then
  local n = 0
  for _, s in ipairs(statuses) do n = n + redis.call('ZCARD', pfx .. skey[s]) end
  if not dsize or n <= dsize then
    driver = {{}}
    for _, s in ipairs(statuses) do driver[#driver + 1] = skey[s] end
  end
end
if not driver then driver = {{'all'}} end
local simple = #attrs == 0 and not f.ca and not f.cb

local function matches(e)
  if e.x and e.x > 0 and e.x <= now then return false end
  if #statuses > 0 then
    local ok = false
    for _, s in ipairs(statuses) do if s == e.s then ok = true end end
    if not ok then return false end
  end
  if f.p and f.p ~= e.p then return false end
  if f.r then
    local ok = false
    for r in string.gmatch(e.r, '[^,]+') do if r == f.r then ok = true end end
    if not ok then return false end
  end
  if f.t and f.t ~= e.t then return false end
  if f.y and f.y ~= e.y then return false end
  if f.ca and e.c < f.ca then return false end
  if f.cb and e.c >= f.cb then return false end
  return true
end

local function after_cursor(sc, id)
  return not cs or sc < cs or (sc == cs and id < cid)
end

local items = {{}}
local counts = {{}}
for _, s in ipairs(counted) do counts[s] = 0 end
local batch = 512
if simple then
  -- Counted statuses are the filter's when it has any (so `skey` holds them all).
  for _, s in ipairs(counted) do counts[s] = redis.call('ZCOUNT', pfx .. (skey[s] or ('st:' .. s)), min, max) end
  for _, key in ipairs(driver) do
    local got, off = 0, 0
    while got <= page do
      local r = redis.call('ZREVRANGEBYSCORE', pfx .. key, hi, min, 'WITHSCORES', 'LIMIT', off, batch)
      for i = 1, #r, 2 do
        local sc = tonumber(r[i + 1])
        if after_cursor(sc, r[i]) and got <= page then
          items[#items + 1] = {{sc, r[i]}}
          got = got + 1
        end
      end
      if #r < batch * 2 then break end
      off = off + batch
    end
  end
else
  -- Counting needs the whole candidate set (in the time range); the page keeps the
  -- first page + 1 matches after the cursor.
  for _, key in ipairs(driver) do
    local got, off = 0, 0
    while true do
      local r = redis.call('ZREVRANGEBYSCORE', pfx .. key, max, min, 'WITHSCORES', 'LIMIT', off, batch)
      for i = 1, #r, 2 do
        local raw = redis.call('HGET', pfx .. 'entry', r[i])
        if raw then
          local e = cjson.decode(raw)
          if matches(e) then
            if counts[e.s] then counts[e.s] = counts[e.s] + 1 end
            local sc = tonumber(r[i + 1])
            if got <= page and after_cursor(sc, r[i]) then
              items[#items + 1] = {{sc, r[i]}}
              got = got + 1
            end
          end
        end
      end
      if #r < batch * 2 then break end
      off = off + batch
    end
  end
end
table.sort(items, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end)
local out = {{}}
local more = 0
for i, it in ipairs(items) do
  if i > page then more = 1 break end
  out[#out + 1] = it[2]
  out[#out + 1] = redis.call('HGET', pfx .. 'entry', it[2]) or ''
end
local flat = {{}}
for _, s in ipairs(counted) do
  flat[#flat + 1] = s
  flat[#flat + 1] = counts[s]
end
return {{flat, out, more}}
"#
    ))
});

/// The filter as the list script reads it (JSON): absent fields match anything.
#[derive(serde::Serialize)]
pub struct FilterArgs {
    /// Statuses, comma-separated (empty = any).
    st: String,
    /// Statuses to count, comma-separated.
    cs: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cb: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ua: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ub: Option<i64>,
}

impl FilterArgs {
    /// The script arguments of `q`: filter JSON, page size, cursor score, cursor id.
    pub fn script_args(q: &ListQuery) -> (String, usize, String, String) {
        let f = Self::of(&q.filter);
        let (cs, cid) = match &q.after {
            Some(Cursor {
                updated_ms,
                task_id,
            }) => (updated_ms.to_string(), task_id.clone()),
            None => (String::new(), String::new()),
        };
        (
            serde_json::to_string(&f).unwrap_or_default(),
            q.page_size,
            cs,
            cid,
        )
    }

    fn of(f: &TaskFilter) -> Self {
        let names = |v: &[taskrouter_proto::v1::TaskStatus]| {
            v.iter()
                .map(|s| s.as_str_name())
                .collect::<Vec<_>>()
                .join(",")
        };
        Self {
            st: names(&f.statuses),
            cs: names(&f.counted_statuses()),
            p: f.path.map(|p| p.as_str_name().to_string()),
            r: f.reason.map(|r| r.as_str_name().to_string()),
            t: f.tenant.clone(),
            y: f.policy_version.clone(),
            ca: f.created_from_ms,
            cb: f.created_to_ms,
            ua: f.updated_from_ms,
            ub: f.updated_to_ms,
        }
    }
}

/// The index key prefix under a store prefix.
pub fn index_prefix(prefix: &str) -> String {
    format!("{prefix}:{{index}}:")
}

/// The index sets (names under the index prefix) `e` belongs to, as `ix_put` adds it,
/// the archive's `expiry` set aside.
pub fn memberships(e: &IndexEntry) -> Vec<String> {
    let mut sets = vec!["all".to_string(), format!("st:{}", e.s)];
    if !e.p.is_empty() {
        sets.push(format!("path:{}", e.p));
    }
    sets.extend(
        e.r.split(',')
            .filter(|r| !r.is_empty())
            .map(|r| format!("reason:{r}")),
    );
    if let Some(t) = e.t.as_deref().filter(|t| !t.is_empty()) {
        sets.push(format!("tenant:{t}"));
        sets.push(format!("st:{}:tenant:{t}", e.s));
    }
    if !e.y.is_empty() {
        sets.push(format!("policy:{}", e.y));
    }
    sets
}

/// The arguments of a checkpoint's direct index update (`index_direct` in the checkpoint
/// script of `redis_store`), for a writer that
/// knows the entry it replaces: `[before JSON, score, sets to add, sets to remove]`, set
/// names one per line. `None` when the write must take the general path: an archiving
/// write (its expiry is the server's clock), an entry without its tenant, or a name
/// holding a line break.
pub fn direct_update(before: &IndexEntry, after: &IndexEntry) -> Option<[String; 4]> {
    if after.x != 0 || before.x != 0 || before.t.is_none() || after.t != before.t {
        return None;
    }
    let added = memberships(after);
    let old = memberships(before);
    if added.iter().chain(&old).any(|k| k.contains('\n')) {
        return None;
    }
    let removed: Vec<&str> = old
        .iter()
        .filter(|k| !added.contains(k))
        .map(String::as_str)
        .collect();
    Some([
        before.to_json(),
        after.u.to_string(),
        added.join("\n"),
        removed.join("\n"),
    ])
}

/// Decodes an entry the scripts returned; `None` for anything unreadable.
pub fn decode_entry(raw: &[u8]) -> Option<IndexEntry> {
    serde_json::from_slice(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str, tenant: Option<&str>) -> IndexEntry {
        IndexEntry {
            v: 3,
            s: s.into(),
            p: "EXECUTION_PATH_SINGLE_AGENT".into(),
            r: "REASON_CODE_SIMPLE_TASK,REASON_CODE_CROSS_REPO".into(),
            t: tenant.map(String::from),
            y: "p1".into(),
            c: 1,
            u: 1_700_000_000_123,
            x: 0,
        }
    }

    #[test]
    fn a_direct_update_adds_every_set_and_removes_only_those_left() {
        let before = entry("TASK_STATUS_PENDING", Some("acme"));
        let after = IndexEntry {
            r: "REASON_CODE_CROSS_REPO".into(),
            ..entry("TASK_STATUS_IN_PROGRESS", Some("acme"))
        };
        let [json, score, added, removed] = direct_update(&before, &after).unwrap();
        assert_eq!(json, before.to_json());
        assert_eq!(score, "1700000000123");
        assert_eq!(
            added.lines().collect::<Vec<_>>(),
            [
                "all",
                "st:TASK_STATUS_IN_PROGRESS",
                "path:EXECUTION_PATH_SINGLE_AGENT",
                "reason:REASON_CODE_CROSS_REPO",
                "tenant:acme",
                "st:TASK_STATUS_IN_PROGRESS:tenant:acme",
                "policy:p1",
            ]
        );
        assert_eq!(
            removed.lines().collect::<Vec<_>>(),
            [
                "st:TASK_STATUS_PENDING",
                "reason:REASON_CODE_SIMPLE_TASK",
                "st:TASK_STATUS_PENDING:tenant:acme",
            ]
        );
    }

    #[test]
    fn what_the_direct_update_cannot_express_takes_the_general_path() {
        let running = entry("TASK_STATUS_IN_PROGRESS", Some("acme"));
        let archived = IndexEntry {
            x: 5,
            ..running.clone()
        };
        assert!(
            direct_update(&running, &archived).is_none(),
            "expiry is the server's"
        );
        let no_tenant = entry("TASK_STATUS_IN_PROGRESS", None);
        assert!(
            direct_update(&no_tenant, &running).is_none(),
            "tenant unknown"
        );
        let odd = IndexEntry {
            y: "line\nbreak".into(),
            ..running.clone()
        };
        assert!(
            direct_update(&running, &odd).is_none(),
            "a name with a line break"
        );
        assert!(direct_update(&running, &running).is_some());
    }

    #[test]
    fn the_scripts_spell_the_marker_key_as_the_store_does() {
        // INDEX_LUA is a plain constant (not formatted), so it spells the name itself.
        assert!(INDEX_LUA.contains(&format!("'{ST_TENANT_READY}'")));
    }
}
