//! The dashboard's HTML, rendered on the server. Every value is escaped; descriptions,
//! results and outputs appear only when the executor was started to show them.

use super::html::{esc, reason, short, time};
use std::fmt::Write as _;
use taskrouter_proto::v1::{
    ExecutionPath, FallbackCause, IterationRecord, ListTasksRequest, ListTasksResponse, ReasonCode,
    RoutingDecision, SessionState, SpecialistStatus, TaskStatus, TeamPhase,
};

/// Most recent iteration records on a task page.
pub const ITERATIONS_SHOWN: usize = 200;

fn status(v: i32) -> String {
    short(
        TaskStatus::try_from(v).unwrap_or_default().as_str_name(),
        "TASK_STATUS_",
    )
}

fn path(v: i32) -> String {
    match ExecutionPath::try_from(v).unwrap_or_default() {
        ExecutionPath::SingleAgent => "single-agent".into(),
        ExecutionPath::MultiAgent => "multi-agent".into(),
        ExecutionPath::Unspecified => "-".into(),
    }
}

fn layout(title: &str, body: &str, logged_in: bool) -> String {
    let logout = if logged_in {
        r#"<form method="post" action="/logout"><button type="submit">Log out</button></form>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · taskrouter</title><link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head>
<body><header><a href="/">taskrouter</a><span>tasks</span>{logout}</header><main>
{body}
</main></body></html>
"#,
        esc(title)
    )
}

/// The login form.
pub fn login(error: Option<&str>) -> String {
    let err = error
        .map(|e| format!(r#"<p class="error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Log in</h1>{err}
<form method="post" action="/login" class="filters">
<label>API token<input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button></form>
<p class="note">The same bearer token as the gRPC API. It is sent once in this form and kept only as a signed, HttpOnly session cookie.</p>"#
    );
    layout("Log in", &body, false)
}

/// A page with one message (errors, not found).
pub fn message(title: &str, text: &str) -> String {
    layout(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">All tasks</a></p>",
            esc(title),
            esc(text)
        ),
        false,
    )
}

fn parse_time(field: &str, v: &str) -> Result<Option<prost_types::Timestamp>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339_weak(v.trim())
        .map(|t| Some(prost_types::Timestamp::from(t)))
        .map_err(|_| format!("{field}: expected a time like 2026-11-28T12:00:00Z"))
}

/// The `List` request a list page's query string asks for. Enum values are proto names;
/// checks beyond parsing (ranges, page size, token) are the call's own.
pub fn list_request(query: &str) -> Result<ListTasksRequest, String> {
    let mut req = ListTasksRequest::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match &*k {
            "status" if !v.is_empty() => req.statuses.push(
                TaskStatus::from_str_name(&v)
                    .map(|s| s as i32)
                    .ok_or_else(|| format!("status: {v:?} is not a task status"))?,
            ),
            "path" if !v.is_empty() => {
                req.path = ExecutionPath::from_str_name(&v)
                    .map(|p| p as i32)
                    .ok_or_else(|| format!("path: {v:?} is not an execution path"))?;
            }
            "reason" if !v.is_empty() => {
                req.reason = ReasonCode::from_str_name(&v)
                    .map(|r| r as i32)
                    .ok_or_else(|| format!("reason: {v:?} is not a reason code"))?;
            }
            "tenant" => req.tenant = v,
            "policy_version" => req.policy_version = v,
            "created_after" => req.created_after = parse_time("created_after", &v)?,
            "created_before" => req.created_before = parse_time("created_before", &v)?,
            "updated_after" => req.updated_after = parse_time("updated_after", &v)?,
            "updated_before" => req.updated_before = parse_time("updated_before", &v)?,
            "page_size" if !v.is_empty() => {
                req.page_size = v
                    .parse()
                    .map_err(|_| "page_size: expected a whole number".to_string())?;
            }
            "page_token" => req.page_token = v,
            _ => {}
        }
    }
    Ok(req)
}

/// The query string of `req` (for links to other pages of the same filter).
fn query_of(req: &ListTasksRequest, page_token: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for s in &req.statuses {
        q.append_pair(
            "status",
            TaskStatus::try_from(*s).unwrap_or_default().as_str_name(),
        );
    }
    if req.path != 0 {
        q.append_pair(
            "path",
            ExecutionPath::try_from(req.path)
                .unwrap_or_default()
                .as_str_name(),
        );
    }
    if req.reason != 0 {
        q.append_pair(
            "reason",
            ReasonCode::try_from(req.reason)
                .unwrap_or_default()
                .as_str_name(),
        );
    }
    for (k, v) in [
        ("tenant", &req.tenant),
        ("policy_version", &req.policy_version),
    ] {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    for (k, t) in [
        ("created_after", &req.created_after),
        ("created_before", &req.created_before),
        ("updated_after", &req.updated_after),
        ("updated_before", &req.updated_before),
    ] {
        if t.is_some() {
            q.append_pair(k, &time(t));
        }
    }
    if req.page_size != 0 {
        q.append_pair("page_size", &req.page_size.to_string());
    }
    if !page_token.is_empty() {
        q.append_pair("page_token", page_token);
    }
    q.finish()
}

fn select<T: Copy>(
    name: &str,
    all: &[T],
    chosen: i32,
    label: impl Fn(T) -> (i32, &'static str),
) -> String {
    let mut out = format!(r#"<select name="{name}"><option value="">any</option>"#);
    for v in all {
        let (n, full) = label(*v);
        let sel = if n == chosen { " selected" } else { "" };
        let text = full.split_once('_').map_or(full, |(_, rest)| rest);
        let text = text
            .strip_prefix("PATH_")
            .or_else(|| text.strip_prefix("CODE_"))
            .unwrap_or(text);
        let _ = write!(out, r#"<option value="{full}"{sel}>{}</option>"#, esc(text));
    }
    out.push_str("</select>");
    out
}

fn filter_form(req: &ListTasksRequest) -> String {
    let mut statuses = String::new();
    for s in crate::session::listing::STATUSES {
        let checked = if req.statuses.contains(&(s as i32)) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            statuses,
            r#"<label><span>{}</span><input type="checkbox" name="status" value="{}"{checked}></label>"#,
            status(s as i32),
            s.as_str_name()
        );
    }
    let paths = select(
        "path",
        &[ExecutionPath::SingleAgent, ExecutionPath::MultiAgent],
        req.path,
        |p| (p as i32, p.as_str_name()),
    );
    let reasons: Vec<ReasonCode> = (1..=32)
        .filter_map(|n| ReasonCode::try_from(n).ok())
        .collect();
    let reasons = select("reason", &reasons, req.reason, |r| {
        (r as i32, r.as_str_name())
    });
    let t = |v: &Option<prost_types::Timestamp>| if v.is_some() { time(v) } else { String::new() };
    format!(
        r#"<form method="get" action="/" class="filters">{statuses}
<label>Path{paths}</label><label>Reason{reasons}</label>
<label>Tenant<input name="tenant" value="{}"></label>
<label>Policy version<input name="policy_version" value="{}" size="14"></label>
<label>Created after<input name="created_after" value="{}" placeholder="2026-11-28T12:00:00Z" size="20"></label>
<label>Created before<input name="created_before" value="{}" size="20"></label>
<label>Updated after<input name="updated_after" value="{}" size="20"></label>
<label>Updated before<input name="updated_before" value="{}" size="20"></label>
<button type="submit">Filter</button></form>"#,
        esc(&req.tenant),
        esc(&req.policy_version),
        esc(&t(&req.created_after)),
        esc(&t(&req.created_before)),
        esc(&t(&req.updated_after)),
        esc(&t(&req.updated_before)),
    )
}

/// The task list.
pub fn list(req: &ListTasksRequest, resp: &ListTasksResponse, logged_in: bool) -> String {
    let mut body =
        String::from(r#"<h1>Tasks <span class="live" id="list-state">static</span></h1>"#);
    body.push_str(&filter_form(req));
    body.push_str(&list_fragment(req, resp));
    layout("Tasks", &body, logged_in)
}

/// The part of the list page that changes (counts, rows, next-page link): the page's
/// script fetches it again every few seconds from `/fragment/tasks` with the same query
/// and swaps it in, so new and changed tasks show without a reload.
pub fn list_fragment(req: &ListTasksRequest, resp: &ListTasksResponse) -> String {
    let mut body = format!(
        r#"<section id="list-live" data-refresh="/fragment/tasks?{}">"#,
        esc(&query_of(req, &req.page_token))
    );
    body.push_str(r#"<div class="counts" id="counts">"#);
    let _ = write!(body, "<span>all {}</span>", resp.total);
    for c in &resp.counts {
        let only = ListTasksRequest {
            statuses: vec![c.status],
            page_token: String::new(),
            ..req.clone()
        };
        let _ = write!(
            body,
            r#"<a href="/?{}" data-status="{}">{} {}</a>"#,
            esc(&query_of(&only, "")),
            status(c.status),
            status(c.status),
            c.count
        );
    }
    body.push_str("</div>");
    body.push_str(
        r#"<table id="tasks"><thead><tr><th>ID</th><th>Status</th><th>Path</th><th>Reasons</th><th class="num">Iterations</th><th class="num">Cost</th><th>Tenant</th><th>Created</th><th>Updated</th></tr></thead><tbody>"#,
    );
    for t in &resp.tasks {
        let reasons: Vec<String> = t.reasons.iter().map(|r| reason(*r)).collect();
        let _ = write!(
            body,
            r#"<tr data-task-id="{id}"><td><a href="/tasks/{href}">{id}</a></td><td class="status-{st}">{st}</td><td>{}</td><td>{}</td><td class="num">{}/{}</td><td class="num">${:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            path(t.path),
            esc(&reasons.join(", ")),
            t.iteration_count,
            t.max_iterations,
            t.cost_usd,
            esc(&t.tenant),
            time(&t.created_at),
            time(&t.updated_at),
            id = esc(&t.task_id),
            href = esc(&utf8_percent_path(&t.task_id)),
            st = status(t.status),
        );
    }
    body.push_str("</tbody></table>");
    if resp.tasks.is_empty() {
        body.push_str(r#"<p class="note">No task matches.</p>"#);
    }
    if !resp.next_page_token.is_empty() {
        let _ = write!(
            body,
            r#"<p><a id="next" href="/?{}">Next page</a></p>"#,
            esc(&query_of(req, &resp.next_page_token))
        );
    }
    body.push_str("</section>");
    body
}

/// A task id as one URL path segment.
fn utf8_percent_path(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn row(out: &mut String, label: &str, value_html: &str) {
    let _ = write!(out, "<dt>{}</dt><dd>{value_html}</dd>", esc(label));
}

/// A task's page.
pub fn task(
    s: &SessionState,
    iterations: &[IterationRecord],
    spend: &super::governance::Spend,
    show_descriptions: bool,
    logged_in: bool,
) -> String {
    let analysis = s.analysis.clone().unwrap_or_default();
    let last_at = iterations
        .iter()
        .map(|r| crate::session::listing::ts_ms(r.at.as_ref()))
        .max()
        .unwrap_or(0);
    let mut body = format!(
        r#"<div data-live-task="{id}" data-last-at="{last_at}"><h1>Task {id} <span class="live" id="live">{}</span></h1>"#,
        if is_final(s.status) {
            "finished"
        } else {
            "static"
        },
        id = esc(&s.task_id),
    );
    let mut dl = String::new();
    row(
        &mut dl,
        "Status",
        &format!(
            r#"<span id="status" class="status-{0}">{0}</span>"#,
            status(s.status)
        ),
    );
    row(
        &mut dl,
        "Iterations",
        &format!(
            r#"<span id="iteration-count">{}</span> of at most <span id="max-iterations">{}</span>; team iterations <span id="team-iterations">{}</span>"#,
            s.iteration_count, s.max_iterations, s.team_iterations
        ),
    );
    row(
        &mut dl,
        "Cost",
        &format!(r#"<span id="cost">${:.4}</span>"#, s.cost_usd),
    );
    row(
        &mut dl,
        "Tokens",
        &format!(
            r#"<span id="tokens">{} in / {} out</span>"#,
            s.tokens_in, s.tokens_out
        ),
    );
    row(&mut dl, "Path", &esc(&path(s.path)));
    row(
        &mut dl,
        "Decision",
        &esc(
            &match RoutingDecision::try_from(analysis.decision).unwrap_or_default() {
                RoutingDecision::UseMultiAgent => "multi-agent".to_string(),
                RoutingDecision::UseSingleAgent => "single-agent".to_string(),
                RoutingDecision::Unspecified => "-".to_string(),
            },
        ),
    );
    let mut reasons = String::from("<ul>");
    for r in &analysis.reasons {
        let _ = write!(
            reasons,
            "<li><b>{}</b>: {}</li>",
            reason(r.code),
            esc(&r.message)
        );
    }
    reasons.push_str("</ul>");
    row(&mut dl, "Reasons", &reasons);
    row(
        &mut dl,
        "Score / confidence",
        &format!("{:.2} / {:.2}", analysis.score, analysis.confidence),
    );
    row(&mut dl, "Policy version", &esc(&analysis.policy_version));
    row(
        &mut dl,
        "Rollout bucket",
        &analysis.rollout_bucket.to_string(),
    );
    row(
        &mut dl,
        "Team phase",
        &format!(
            r#"<span id="phase">{}</span>"#,
            short(
                TeamPhase::try_from(s.phase)
                    .unwrap_or_default()
                    .as_str_name(),
                "TEAM_PHASE_"
            )
        ),
    );
    if let Some(f) = &s.fallback {
        row(
            &mut dl,
            "Fallback",
            &format!(
                "{} in phase {} at {}: {}",
                short(
                    FallbackCause::try_from(f.cause)
                        .unwrap_or_default()
                        .as_str_name(),
                    "FALLBACK_CAUSE_"
                ),
                short(
                    TeamPhase::try_from(f.phase)
                        .unwrap_or_default()
                        .as_str_name(),
                    "TEAM_PHASE_"
                ),
                time(&f.at),
                esc(&f.detail)
            ),
        );
    }
    if let Some(t) = &s.task {
        let tenant = t.labels.get(crate::session::listing::TENANT_LABEL);
        row(&mut dl, "Tenant", &esc(tenant.map_or("-", String::as_str)));
        row(&mut dl, "Repositories", &esc(&t.repositories.join(", ")));
        row(
            &mut dl,
            "Estimated value",
            &format!("${:.2}", t.estimated_value_usd),
        );
        row(
            &mut dl,
            "Description",
            &if show_descriptions {
                format!("<pre>{}</pre>", esc(&t.description))
            } else {
                format!(
                    r#"<span class="note">hidden ({} bytes; start the executor with --ui-show-descriptions to show)</span>"#,
                    t.description.len()
                )
            },
        );
    }
    row(&mut dl, "Created", &time(&s.created_at));
    row(&mut dl, "Updated", &time(&s.updated_at));
    row(&mut dl, "Finished", &time(&s.finished_at));
    row(&mut dl, "Worker", &esc(&s.worker_id));
    row(
        &mut dl,
        "Deliveries",
        &format!(
            "{}{}",
            s.delivery_count,
            if s.dead_lettered {
                " (dead-lettered)"
            } else {
                ""
            }
        ),
    );
    if s.archived {
        row(&mut dl, "Archived until", &time(&s.archive_expires_at));
    }
    if !s.last_error.is_empty() {
        row(
            &mut dl,
            "Last error",
            &format!(r#"<span class="error">{}</span>"#, esc(&s.last_error)),
        );
    }
    if show_descriptions && !s.result.is_empty() {
        row(&mut dl, "Result", &format!("<pre>{}</pre>", esc(&s.result)));
    }
    let _ = write!(body, "<dl>{dl}</dl>");
    body.push_str(&extras(s, spend, show_descriptions));
    if !s.specialists.is_empty() {
        body.push_str(
            "<h2>Specialists</h2><table><thead><tr><th>Role</th><th>Status</th><th class=\"num\">Iterations</th><th>Last error</th></tr></thead><tbody>",
        );
        for sp in &s.specialists {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&sp.role),
                short(
                    SpecialistStatus::try_from(sp.status)
                        .unwrap_or_default()
                        .as_str_name(),
                    "SPECIALIST_STATUS_"
                ),
                sp.iterations,
                esc(&sp.last_error)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(
        body,
        "<h2>Iterations</h2><p class=\"note\">The most recent {ITERATIONS_SHOWN}; the whole log is readable with <code>ListIterations</code>.</p>"
    );
    body.push_str(
        r#"<table id="iterations"><thead><tr><th class="num">#</th><th>Role</th><th>Done</th><th class="num">Cost</th><th class="num">Tokens in</th><th class="num">Tokens out</th><th>At</th><th>Worker</th></tr></thead><tbody id="iteration-rows">"#,
    );
    for r in iterations {
        let _ = write!(
            body,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">${:.4}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            r.iteration,
            esc(&r.role),
            if r.done { "yes" } else { "no" },
            r.cost_usd,
            r.tokens_in,
            r.tokens_out,
            time(&r.at),
            esc(&r.worker_id)
        );
    }
    body.push_str("</tbody></table></div>");
    if show_descriptions && !iterations.is_empty() {
        body.push_str("<h2>Latest output</h2>");
        if let Some(r) = iterations.last() {
            let _ = write!(body, "<pre>{}</pre>", esc(&r.output));
        }
    }
    layout(&format!("Task {}", s.task_id), &body, logged_in)
}

/// The sections a task has only with governance or workspaces on: approvals, budget,
/// branches. One element, so the page's script can swap it whole when they change.
pub fn extras(s: &SessionState, spend: &super::governance::Spend, show_comments: bool) -> String {
    format!(
        r#"<div id="task-extras">{}{}{}</div>"#,
        super::governance::approvals(s, show_comments),
        super::governance::budget(s, spend),
        super::workspace::branches(s)
    )
}

fn is_final(status: i32) -> bool {
    matches!(
        TaskStatus::try_from(status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_queries_round_trip() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let req = list_request(
            "status=TASK_STATUS_FAILED&status=TASK_STATUS_PENDING&path=EXECUTION_PATH_MULTI_AGENT&tenant=a%26b&created_after=2026-01-02T03:04:05Z",
        )
        .unwrap();
        assert_eq!(req.statuses, vec![4, 1]);
        assert_eq!(req.tenant, "a&b");
        assert_eq!(list_request(&query_of(&req, "")).unwrap(), req);
        assert!(
            list_request("status=NOPE")
                .unwrap_err()
                .starts_with("status")
        );
        assert!(
            list_request("created_before=yesterday")
                .unwrap_err()
                .starts_with("created_before")
        );
    }
}
