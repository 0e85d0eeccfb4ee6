//! The read-only web dashboard (`--ui-listen`): the task list with the `List` filters
//! (its script refetches the changing part from `/fragment/tasks` every 2 s), a page per
//! task (with its approval gates, budget and workspace branches when it has them), and
//! live updates over server-sent events read from the same event stream as `Watch`. Server-rendered HTML with a little plain JavaScript (the pages
//! read fine without it). Protected by the gRPC API's bearer token through a login
//! form that sets an HttpOnly, SameSite=Strict cookie; no token ever travels in a URL.
//! Descriptions, results, agent outputs and approvers' comments are shown only with
//! `--ui-show-descriptions`.

mod events;
mod governance;
mod html;
mod pages;
mod session;
mod workspace;

use crate::autonomous_loop::AutonomousLoop;
use crate::error::{Error, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use service_kit::Shutdown;
use service_kit::auth::Credentials;
use std::net::SocketAddr;
use std::sync::Arc;

/// Dashboard settings.
#[derive(Clone, Debug)]
pub struct UiSettings {
    /// Where it listens (HTTP).
    pub listen: SocketAddr,
    /// Show descriptions, results, agent outputs and approvers' comments.
    pub show_descriptions: bool,
}

/// What every handler reads.
#[derive(Clone)]
struct Ui {
    engine: Arc<AutonomousLoop>,
    token: Option<Credentials>,
    show_descriptions: bool,
    shutdown: Shutdown,
}

/// Content-Security-Policy of every answer: only our own script and style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A running dashboard.
pub struct UiServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl UiServer {
    /// Waits for it to stop (it stops when the shutdown it was started with fires).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Binds `settings.listen` and serves the dashboard until `shutdown`.
pub async fn start(
    engine: Arc<AutonomousLoop>,
    token: Option<Credentials>,
    settings: &UiSettings,
    shutdown: Shutdown,
) -> Result<UiServer> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "--ui-listen / EXECUTOR_UI_LISTEN: cannot bind {}: {e}",
                settings.listen
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("dashboard address: {e}")))?;
    let state = Ui {
        engine,
        token,
        show_descriptions: settings.show_descriptions,
        shutdown: shutdown.clone(),
    };
    let app = router(state);
    tracing::info!(%addr, "dashboard listening");
    let task = tokio::spawn(async move {
        let stop = async move { shutdown.wait().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "dashboard server ended with an error");
        }
    });
    Ok(UiServer { addr, task })
}

fn router(state: Ui) -> Router {
    let protected = Router::new()
        .route("/", get(list_page))
        .route("/fragment/tasks", get(list_fragment))
        .route("/tasks/{id}", get(task_page))
        .route("/tasks/{id}/events", get(task_events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_login));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn require_login(State(ui): State<Ui>, req: Request, next: Next) -> Response {
    if ui.token.is_none() {
        return next.run(req).await;
    }
    let ok = match ui.engine.store().page_token_key().await {
        Ok(key) => session::valid(&key, req.headers()),
        Err(e) => return error_page(&e),
    };
    if ok {
        next.run(req).await
    } else if req.uri().path().ends_with("/events") || req.uri().path().starts_with("/fragment/") {
        // What scripts fetch gets a status they can act on, not a login page.
        StatusCode::UNAUTHORIZED.into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

async fn login_form(State(ui): State<Ui>) -> Response {
    if ui.token.is_none() {
        return Redirect::to("/").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

async fn login(State(ui): State<Ui>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(token) = &ui.token else {
        return Redirect::to("/").into_response();
    };
    let presented = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let header_value = format!("Bearer {}", presented.trim());
    if token.verify(Some(header_value.as_bytes())).is_none() {
        tracing::info!("dashboard login refused");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That token is not valid.")),
        );
    }
    let key = match ui.engine.store().page_token_key().await {
        Ok(k) => k,
        Err(e) => return error_page(&e),
    };
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::cookie(&key, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout() -> Response {
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(session::CLEARED),
    );
    resp
}

async fn list_page(State(ui): State<Ui>, RawQuery(query): RawQuery) -> Response {
    let req = pages::list_request(query.as_deref().unwrap_or_default());
    let req = match req {
        Ok(r) => r,
        Err(msg) => return html(StatusCode::BAD_REQUEST, pages::message("Bad filter", &msg)),
    };
    let store = ui.engine.store();
    match crate::task_list::list(store.as_ref(), &req).await {
        Ok(resp) => html(StatusCode::OK, pages::list(&req, &resp, ui.token.is_some())),
        Err(e) => error_page(&e),
    }
}

/// The changing part of the list page, for its script's refresh (same query, same checks).
async fn list_fragment(State(ui): State<Ui>, RawQuery(query): RawQuery) -> Response {
    let req = match pages::list_request(query.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(msg) => return html(StatusCode::BAD_REQUEST, pages::message("Bad filter", &msg)),
    };
    let store = ui.engine.store();
    match crate::task_list::list(store.as_ref(), &req).await {
        Ok(resp) => html(StatusCode::OK, pages::list_fragment(&req, &resp)),
        Err(e) => error_page(&e),
    }
}

/// The spend records of the task's budget section; best effort (the section falls back
/// to the state's cost when the store does not answer).
async fn spend_of(ui: &Ui, s: &taskrouter_proto::v1::SessionState) -> governance::Spend {
    if !governance::has_budget(s) {
        return governance::Spend::default();
    }
    let store = ui.engine.store();
    let task = store.task_spend(&s.task_id).await.ok();
    let tenant_today = match governance::tenant_of(s) {
        Some(tenant) => {
            let day = crate::session::governance::utc_day(std::time::SystemTime::now());
            store
                .tenant_spend(&tenant, &day)
                .await
                .ok()
                .map(|t| (day, t))
        }
        None => None,
    };
    governance::Spend { task, tenant_today }
}

async fn task_page(State(ui): State<Ui>, Path(id): Path<String>) -> Response {
    let mut v = service_kit::validation::Violations::new();
    service_kit::validation::check_task_id(&mut v, "task_id", &id);
    if !v.is_empty() {
        return not_found().await;
    }
    let state = match ui.engine.get(&id).await {
        Ok(s) => s,
        Err(e) => return error_page(&e),
    };
    let iterations = match ui
        .engine
        .store()
        .iterations(&id, pages::ITERATIONS_SHOWN)
        .await
    {
        Ok(i) => i,
        Err(e) => return error_page(&e),
    };
    let spend = spend_of(&ui, &state).await;
    html(
        StatusCode::OK,
        pages::task(
            &state,
            &iterations,
            &spend,
            ui.show_descriptions,
            ui.token.is_some(),
        ),
    )
}

async fn task_events(State(ui): State<Ui>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut v = service_kit::validation::Violations::new();
    service_kit::validation::check_task_id(&mut v, "task_id", &id);
    if !v.is_empty() {
        return not_found().await;
    }
    if let Err(e) = ui.engine.get(&id).await {
        return error_page(&e);
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    events::stream(ui.engine.clone(), id, after, ui.shutdown.clone()).into_response()
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/app.css"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

async fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page or task."),
    )
}

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// An error as a page: the status that fits, a short sentence, never internals.
fn error_page(e: &Error) -> Response {
    let (status, title, text) = match e {
        Error::NotFound { .. } => (
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such task (it may have expired from the archive).".to_string(),
        ),
        Error::InvalidRequest(s) => (
            StatusCode::BAD_REQUEST,
            "Bad filter",
            s.as_slice()
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Error::CorruptState { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unreadable task",
            "The stored state of this task cannot be read; it is kept for inspection.".into(),
        ),
        other if other.is_transient() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The store is not answering; try again shortly.".into(),
        ),
        other => {
            tracing::warn!(error = %other, "dashboard request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "Something went wrong; the executor log has the details.".into(),
            )
        }
    };
    html(status, pages::message(title, &text))
}
