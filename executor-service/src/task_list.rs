//! The `List` and `ListIterations` calls over any [`SessionStore`]: request checks,
//! signed page tokens, and task summaries (never descriptions). Shared by the gRPC
//! service and the dashboard.

use crate::error::{Error, Result};
use crate::session::listing::{Cursor, ListQuery, TaskFilter, ts_ms};
use crate::session::{ListPage, SessionStore};
use prost::Message as _;
use ring::hmac;
use service_kit::validation::{Violations, check_task_id};
use std::time::{SystemTime, UNIX_EPOCH};
use taskrouter_proto::v1::{
    ExecutionPath, ListIterationsRequest, ListIterationsResponse, ListTasksRequest,
    ListTasksResponse, ReasonCode, StatusCount, TaskStatus, TaskSummary,
};

/// Largest `page_size` of either call.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// `List` page size when the request gives none.
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 50;
/// `ListIterations` page size when the request gives none.
pub const DEFAULT_ITERATIONS_PAGE_SIZE: u32 = 100;
/// A page token older than this is refused as stale (seconds).
pub const PAGE_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;
/// Longest accepted tenant or policy-version filter, in bytes.
const MAX_FILTER_BYTES: usize = 256;
/// Bytes of the signature (HMAC-SHA256).
const TAG_LEN: usize = 32;
/// Bytes of the fingerprint binding a token to its filter or task.
pub const FINGERPRINT_LEN: usize = 16;
/// Token kind (and layout version) of `List` tokens.
pub const TOKEN_V1_LIST: u8 = 1;
/// Token kind (and layout version) of `ListIterations` tokens.
pub const TOKEN_V1_ITERATIONS: u8 = 2;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn invalid(field: &str, why: impl Into<String>) -> Error {
    let mut v = Violations::new();
    v.add(field, why);
    Error::InvalidRequest(v)
}

/// What a token carries besides its kind and signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBody {
    /// Binds the token to its filter (`List`) or task (`ListIterations`).
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// When it was issued (seconds since the epoch).
    pub issued: u64,
    /// Update time of the last task listed, or the next iteration's offset.
    pub position: i64,
    /// Id of the last task listed (empty for `ListIterations`).
    pub id: String,
}

/// Signs and checks page tokens: `hex(kind | fingerprint | issued | position | id | tag)`
/// with an HMAC-SHA256 tag, so a token cannot be forged or moved to another filter.
/// Public for the fuzz targets (`tests/fuzz`); callers go through [`list`].
pub struct Tokens {
    key: hmac::Key,
}

impl Tokens {
    /// Tokens signed with `secret` (the store's page token key).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token of `body`, of `kind` ([`TOKEN_V1_LIST`] or [`TOKEN_V1_ITERATIONS`]).
    pub fn seal(&self, kind: u8, body: &TokenBody) -> String {
        let mut raw = vec![kind];
        raw.extend_from_slice(&body.fingerprint);
        raw.extend_from_slice(&body.issued.to_be_bytes());
        raw.extend_from_slice(&body.position.to_be_bytes());
        raw.extend_from_slice(body.id.as_bytes());
        let tag = hmac::sign(&self.key, &raw);
        raw.extend_from_slice(tag.as_ref());
        hex::encode(raw)
    }

    /// The body of `token` if this key signed it for `kind` and `fingerprint` within
    /// [`PAGE_TOKEN_LIFETIME_SECS`]; otherwise INVALID_ARGUMENT naming `page_token`.
    pub fn open(
        &self,
        kind: u8,
        token: &str,
        fingerprint: [u8; FINGERPRINT_LEN],
    ) -> Result<TokenBody> {
        let bad = |why: &str| invalid("page_token", why);
        let raw = hex::decode(token).map_err(|_| bad("is not a token this service issued"))?;
        let min = 1 + FINGERPRINT_LEN + 8 + 8 + TAG_LEN;
        if raw.len() < min || raw[0] != kind {
            return Err(bad("is not a token this service issued for this call"));
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        if hmac::verify(&self.key, signed, tag).is_err() {
            return Err(bad("has been altered or was not issued by this service"));
        }
        let mut at = 1;
        let mut take = |n: usize| {
            let s = &signed[at..at + n];
            at += n;
            s
        };
        let mut fp = [0u8; FINGERPRINT_LEN];
        fp.copy_from_slice(take(FINGERPRINT_LEN));
        let issued = u64::from_be_bytes(take(8).try_into().unwrap_or_default());
        let position = i64::from_be_bytes(take(8).try_into().unwrap_or_default());
        let id = String::from_utf8(signed[at..].to_vec()).map_err(|_| bad("is malformed"))?;
        if fp != fingerprint {
            return Err(bad(
                "belongs to a different filter or task; start again without a token",
            ));
        }
        if now_secs().saturating_sub(issued) > PAGE_TOKEN_LIFETIME_SECS {
            return Err(bad("has expired; start again without a token"));
        }
        Ok(TokenBody {
            fingerprint: fp,
            issued,
            position,
            id,
        })
    }
}

fn fingerprint(bytes: &[u8]) -> [u8; FINGERPRINT_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut fp = [0u8; FINGERPRINT_LEN];
    fp.copy_from_slice(&digest.as_ref()[..FINGERPRINT_LEN]);
    fp
}

fn timestamp_ms(
    v: &mut Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Option<i64> {
    let t = t?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(field, "nanos must be in 0..1e9");
        return None;
    }
    Some(ts_ms(Some(t)))
}

/// Checks `req` and turns it into a store filter (every problem named by field).
pub fn filter_of(req: &ListTasksRequest) -> Result<TaskFilter> {
    let mut v = Violations::new();
    let mut statuses = Vec::new();
    for (i, s) in req.statuses.iter().enumerate() {
        match TaskStatus::try_from(*s) {
            Ok(TaskStatus::Unspecified) | Err(_) => v.add(
                format!("statuses[{i}]"),
                format!("{s} is not a task status (PENDING..WAITING_APPROVAL)"),
            ),
            Ok(st) => statuses.push(st),
        }
    }
    statuses.sort_by_key(|s| *s as i32);
    statuses.dedup();
    let path = match ExecutionPath::try_from(req.path) {
        Ok(ExecutionPath::Unspecified) => None,
        Ok(p) => Some(p),
        Err(_) => {
            v.add("path", format!("{} is not an execution path", req.path));
            None
        }
    };
    let reason = match ReasonCode::try_from(req.reason) {
        Ok(ReasonCode::Unspecified) => None,
        Ok(r) => Some(r),
        Err(_) => {
            v.add("reason", format!("{} is not a reason code", req.reason));
            None
        }
    };
    for (field, value) in [
        ("tenant", &req.tenant),
        ("policy_version", &req.policy_version),
    ] {
        if value.len() > MAX_FILTER_BYTES {
            v.add(field, format!("must be at most {MAX_FILTER_BYTES} bytes"));
        }
    }
    if req.page_size > MAX_PAGE_SIZE {
        v.add("page_size", format!("must be at most {MAX_PAGE_SIZE}"));
    }
    let ca = timestamp_ms(&mut v, "created_after", req.created_after.as_ref());
    let cb = timestamp_ms(&mut v, "created_before", req.created_before.as_ref());
    let ua = timestamp_ms(&mut v, "updated_after", req.updated_after.as_ref());
    let ub = timestamp_ms(&mut v, "updated_before", req.updated_before.as_ref());
    if let (Some(a), Some(b)) = (ca, cb)
        && b <= a
    {
        v.add("created_before", "must be later than created_after");
    }
    if let (Some(a), Some(b)) = (ua, ub)
        && b <= a
    {
        v.add("updated_before", "must be later than updated_after");
    }
    Error::check(v)?;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(TaskFilter {
        statuses,
        path,
        reason,
        tenant: non_empty(&req.tenant),
        policy_version: non_empty(&req.policy_version),
        created_from_ms: ca,
        created_to_ms: cb,
        updated_from_ms: ua,
        updated_to_ms: ub,
    })
}

/// The fingerprint of a filter: the request without paging, statuses normalised.
fn filter_fingerprint(req: &ListTasksRequest, filter: &TaskFilter) -> [u8; FINGERPRINT_LEN] {
    let canonical = ListTasksRequest {
        statuses: filter.statuses.iter().map(|s| *s as i32).collect(),
        page_size: 0,
        page_token: String::new(),
        ..req.clone()
    };
    fingerprint(&canonical.encode_to_vec())
}

/// Answers `List`.
pub async fn list(store: &dyn SessionStore, req: &ListTasksRequest) -> Result<ListTasksResponse> {
    let filter = filter_of(req)?;
    let tokens = Tokens::new(&store.page_token_key().await?);
    let fp = filter_fingerprint(req, &filter);
    let after = if req.page_token.is_empty() {
        None
    } else {
        let body = tokens.open(TOKEN_V1_LIST, &req.page_token, fp)?;
        Some(Cursor {
            updated_ms: body.position,
            task_id: body.id,
        })
    };
    let page_size = match req.page_size {
        0 => DEFAULT_LIST_PAGE_SIZE,
        n => n,
    } as usize;
    let page = store
        .list(&ListQuery {
            filter: filter.clone(),
            page_size,
            after,
        })
        .await?;
    Ok(response(page, &filter, &tokens, fp))
}

fn response(
    page: ListPage,
    filter: &TaskFilter,
    tokens: &Tokens,
    fp: [u8; FINGERPRINT_LEN],
) -> ListTasksResponse {
    let next_page_token = page.next.map_or_else(String::new, |c| {
        tokens.seal(
            TOKEN_V1_LIST,
            &TokenBody {
                fingerprint: fp,
                issued: now_secs(),
                position: c.updated_ms,
                id: c.task_id,
            },
        )
    });
    let counts: Vec<StatusCount> = page
        .counts
        .iter()
        .map(|(s, n)| StatusCount {
            status: *s as i32,
            count: *n,
        })
        .collect();
    let tasks = page
        .tasks
        .into_iter()
        // A task that changed status between the index read and the state read.
        .filter(|t| {
            filter.statuses.is_empty()
                || filter.statuses.iter().any(|s| *s as i32 == t.state.status)
        })
        .map(|t| summary(&t.state, t.tenant))
        .collect();
    ListTasksResponse {
        tasks,
        next_page_token,
        total: counts.iter().map(|c| c.count).sum(),
        counts,
    }
}

/// The listing view of a state: no description, result or outputs.
pub fn summary(s: &taskrouter_proto::v1::SessionState, tenant: String) -> TaskSummary {
    let analysis = s.analysis.as_ref();
    TaskSummary {
        task_id: s.task_id.clone(),
        status: s.status,
        path: s.path,
        decision: analysis.map_or(0, |a| a.decision),
        reasons: analysis.map_or_else(Vec::new, |a| a.reasons.iter().map(|r| r.code).collect()),
        policy_version: analysis.map_or_else(String::new, |a| a.policy_version.clone()),
        tenant,
        iteration_count: s.iteration_count,
        max_iterations: s.max_iterations,
        team_iterations: s.team_iterations,
        phase: s.phase,
        cost_usd: s.cost_usd,
        tokens_in: s.tokens_in,
        tokens_out: s.tokens_out,
        created_at: s.created_at,
        updated_at: s.updated_at,
        finished_at: s.finished_at,
        fallback_cause: s.fallback.as_ref().map_or(0, |f| f.cause),
        archived: s.archived,
        worker_id: s.worker_id.clone(),
        version: s.version,
    }
}

/// Answers `ListIterations`; NOT_FOUND for an unknown task.
pub async fn list_iterations(
    store: &dyn SessionStore,
    req: &ListIterationsRequest,
) -> Result<ListIterationsResponse> {
    let mut v = Violations::new();
    check_task_id(&mut v, "task_id", &req.task_id);
    if req.page_size > MAX_PAGE_SIZE {
        v.add("page_size", format!("must be at most {MAX_PAGE_SIZE}"));
    }
    Error::check(v)?;
    let tokens = Tokens::new(&store.page_token_key().await?);
    let fp = fingerprint(req.task_id.as_bytes());
    let offset = if req.page_token.is_empty() {
        0
    } else {
        let body = tokens.open(TOKEN_V1_ITERATIONS, &req.page_token, fp)?;
        u64::try_from(body.position).map_err(|_| invalid("page_token", "is malformed"))?
    };
    if store.load(&req.task_id).await?.is_none() {
        return Err(Error::NotFound {
            task_id: req.task_id.clone(),
        });
    }
    let page_size = match req.page_size {
        0 => DEFAULT_ITERATIONS_PAGE_SIZE,
        n => n,
    } as usize;
    let (iterations, total) = store
        .iterations_page(&req.task_id, offset, page_size)
        .await?;
    let next = offset + iterations.len() as u64;
    let next_page_token = if next < total && !iterations.is_empty() {
        tokens.seal(
            TOKEN_V1_ITERATIONS,
            &TokenBody {
                fingerprint: fp,
                issued: now_secs(),
                position: next as i64,
                id: String::new(),
            },
        )
    } else {
        String::new()
    };
    Ok(ListIterationsResponse {
        iterations,
        next_page_token,
        total,
    })
}
