//! The web dashboard in a real headless Chromium against a real executor process: log
//! in with the API token, list tasks and see a new one appear without a reload, open a
//! running one, watch its iteration count advance without a reload, and never see its
//! description. With a real router deciding under an approval policy, budgets and git
//! workspaces: a task's gates (pending, then approved by a named approver, live), the
//! budget that stopped a task, and the task's branch and commit as the remote has it.
//! Screenshots go to `target/dashboard-*.png` for reviewers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{
    ApprovalGate, Complexity, DecisionRequest, GetRequest, SessionState, SubmitRequest, Task,
    TaskStatus,
};
use test_support::{Browser, GitRemotes, RedisServer, ServiceProcess, free_port, workspace_root};

const TOKEN: &str = "dashboard-test-token-0123456789";
const SECRET: &str = "PATIENT-7731 rotate the billing keys";

fn task(id: &str, iterations: u32, latency_ms: u32, tenant: &str) -> Task {
    Task {
        id: id.into(),
        description: SECRET.into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 5.0,
        repositories: vec!["org/app".into()],
        labels: [
            ("sim.iterations".to_string(), iterations.to_string()),
            ("sim.latency_ms".to_string(), latency_ms.to_string()),
            ("tenant".to_string(), tenant.to_string()),
        ]
        .into(),
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// One raw HTTP/1.1 exchange: (status, headers lower-cased, body).
fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn get(addr: SocketAddr, path: &str, cookie: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    )
}

/// Opens the dashboard and logs in through the form, like a person.
fn log_in(b: &mut Browser, base: &str) -> test_support::Page {
    let page = b.open(&format!("{base}/"));
    b.wait_for(
        &page,
        "location.pathname === '/login'",
        Duration::from_secs(30),
    );
    b.eval(
        &page,
        &format!(
            "document.querySelector('input[name=token]').value = '{TOKEN}'; \
             document.querySelector('form.filters').submit(); true"
        ),
    );
    b.wait_for(&page, "location.pathname === '/'", Duration::from_secs(30));
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_tasks_and_follows_a_running_one_live() {
    let redis = RedisServer::start();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ui: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _executor = ServiceProcess::spawn(
        "executor-service",
        &[
            "--listen",
            &grpc.to_string(),
            "--ui-listen",
            &ui.to_string(),
            "--router-addr",
            "",
            "--concurrency",
            "2",
        ],
        &[
            ("REDIS_URL", &redis.url()),
            ("TASKROUTER_AUTH_TOKEN", TOKEN),
        ],
    );
    assert!(
        test_support::wait_for_grpc_serving(
            grpc,
            "taskrouter.v1.Executor",
            Duration::from_secs(30)
        )
        .await,
        "executor never became SERVING"
    );
    let mut client = ExecutorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for t in [
        task("WEB-DONE", 2, 0, "acme"),
        task("WEB-RUN", 600, 150, "globex"),
    ] {
        client
            .submit(authed(SubmitRequest {
                task: Some(t),
                max_iterations: 1000,
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    // Wait until WEB-RUN has started and WEB-DONE has finished.
    for (id, want) in [
        ("WEB-DONE", TaskStatus::Completed),
        ("WEB-RUN", TaskStatus::InProgress),
    ] {
        let mut ok = false;
        for _ in 0..200 {
            let s = client
                .get(authed(GetRequest {
                    task_id: id.into(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .state
                .unwrap();
            if s.status == want as i32 && s.iteration_count >= 1 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "{id} never reached {want:?}");
    }

    // Without the cookie: the login page, never data. With a wrong token: refused.
    let (code, head, _) = get(ui, "/", "");
    assert_eq!(code, 303);
    assert!(head.contains("location: /login"), "{head}");
    let wrong = "token=not-the-token-at-all";
    let (code, _, _) = http(
        ui,
        &format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{wrong}",
            wrong.len()
        ),
    );
    assert_eq!(code, 401);
    let form = format!("token={TOKEN}");
    let (code, head, _) = http(
        ui,
        &format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(code, 303);
    let set_cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a session cookie");
    assert!(set_cookie.contains("httponly") && set_cookie.contains("samesite=strict"));
    assert!(
        !set_cookie.contains(&TOKEN.to_ascii_lowercase()),
        "the token is not the cookie"
    );
    let cookie = set_cookie
        .trim_start_matches("set-cookie:")
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Security headers, 404 for an unknown task, no internals.
    let (code, head, body) = get(ui, "/tasks/NO-SUCH-TASK", &cookie);
    assert_eq!(code, 404);
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"));
    assert!(head.contains("x-content-type-options: nosniff"));
    assert!(body.contains("Not found") && !body.contains("panicked") && !body.contains("Error {"));
    let (code, _, body) = get(ui, "/?created_before=yesterday", &cookie);
    assert_eq!(code, 400);
    assert!(body.contains("created_before"), "{body}");
    let (code, _, body) = get(ui, "/?page_token=forged", &cookie);
    assert_eq!(code, 400);
    assert!(body.contains("page_token"), "{body}");

    // The browser: log in through the form like a person.
    let base = format!("http://{ui}");
    let shots = workspace_root().join("target");
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch();
        let page = log_in(&mut b, &base);
        b.wait_for(
            &page,
            "location.pathname === '/' && document.querySelectorAll('#tasks tr[data-task-id]').length === 2",
            Duration::from_secs(30),
        );
        let rows = b.eval(
            &page,
            "Array.from(document.querySelectorAll('#tasks tr[data-task-id]')).map(r => r.dataset.taskId + ' ' + r.cells[1].textContent)",
        );
        let rows: Vec<String> = serde_json::from_value(rows).unwrap();
        assert!(rows.contains(&"WEB-RUN IN_PROGRESS".to_string()), "{rows:?}");
        assert!(rows.contains(&"WEB-DONE COMPLETED".to_string()), "{rows:?}");
        let html = b.eval(&page, "document.documentElement.outerHTML");
        assert!(!html.as_str().unwrap().contains("PATIENT-7731"));
        b.screenshot(&page, &shots.join("dashboard-list.png"));

        // A task submitted now shows up in the open list, without a reload.
        b.eval(&page, "window.__sameDocument = true; true");
        rt.block_on(async {
            client
                .submit(authed(SubmitRequest {
                    task: Some(task("WEB-NEW", 1, 0, "acme")),
                    ..Default::default()
                }))
                .await
                .unwrap();
        });
        b.wait_for(
            &page,
            "window.__sameDocument === true && document.querySelector('#tasks tr[data-task-id=\"WEB-NEW\"]') !== null \
             && document.getElementById('list-state').textContent.startsWith('live')",
            Duration::from_secs(30),
        );

        // The same filters as List: only globex.
        b.navigate(&page, &format!("{base}/?tenant=globex"));
        let ids = b.eval(
            &page,
            "Array.from(document.querySelectorAll('#tasks tr[data-task-id]')).map(r => r.dataset.taskId)",
        );
        assert_eq!(ids, serde_json::json!(["WEB-RUN"]));

        // Open the running task by clicking it.
        b.eval(&page, "document.querySelector('tr[data-task-id=\"WEB-RUN\"] a').click(); true");
        b.wait_for(
            &page,
            "location.pathname === '/tasks/WEB-RUN' && document.readyState === 'complete'",
            Duration::from_secs(30),
        );
        // A marker that a reload would wipe.
        b.eval(&page, "window.__sameDocument = true; true");
        let first: u64 = b
            .eval(&page, "Number(document.getElementById('iteration-count').textContent)")
            .as_f64()
            .unwrap() as u64;
        let rows_before = b
            .eval(&page, "document.querySelectorAll('#iteration-rows tr').length")
            .as_f64()
            .unwrap();
        b.wait_for(
            &page,
            &format!(
                "window.__sameDocument === true && Number(document.getElementById('iteration-count').textContent) >= {} \
                 && document.querySelectorAll('#iteration-rows tr').length > {rows_before} \
                 && document.getElementById('live').textContent === 'live'",
                first + 3
            ),
            Duration::from_secs(30),
        );
        let text = b.eval(&page, "document.body.innerText");
        let text = text.as_str().unwrap();
        assert!(text.contains("IN_PROGRESS"), "{text}");
        assert!(text.contains("ROUTER_UNAVAILABLE"), "the reasons are shown: {text}");
        assert!(text.contains("hidden ("), "the description is hidden: {text}");
        let html = b.eval(&page, "document.documentElement.outerHTML");
        assert!(!html.as_str().unwrap().contains("PATIENT-7731"), "no description anywhere");
        b.screenshot(&page, &shots.join("dashboard-task.png"));
    })
    .await
    .unwrap();
}

/// DEPLOYMENT work waits for a person before it starts; tenant acme may spend $2.50 a day.
const POLICY: &str = r#"
[tenants.usd_per_day]
acme = 2.5

[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"
"#;
const COMMENT: &str = "COMMENT-5521 checked the rollout plan";

fn gov_task(id: &str, description: &str, iterations: u32) -> Task {
    Task {
        id: id.into(),
        description: format!("{description} {SECRET}"),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 5.0,
        repositories: vec!["app".into()],
        labels: [
            ("sim.iterations".to_string(), iterations.to_string()),
            ("sim.latency_ms".to_string(), "100".to_string()),
            ("tenant".to_string(), "acme".to_string()),
        ]
        .into(),
    }
}

async fn wait_state(
    client: &mut ExecutorClient<tonic::transport::Channel>,
    id: &str,
    want: TaskStatus,
) -> SessionState {
    for _ in 0..600 {
        let s = client
            .get(authed(GetRequest {
                task_id: id.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .state
            .unwrap();
        if s.status == want as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never reached {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_page_shows_gates_budgets_and_branches() {
    let redis = RedisServer::start();
    let remotes = GitRemotes::new();
    remotes.create("app", 3, 64);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("oncall {TOKEN} approver\n")).unwrap();
    let workspaces = dir.path().join("workspaces");
    let router_port = free_port();
    let _router = ServiceProcess::spawn(
        "router-service",
        &[
            "--listen",
            &format!("127.0.0.1:{router_port}"),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[],
    );
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ui: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let executor = ServiceProcess::spawn(
        "executor-service",
        &[
            "--listen",
            &grpc.to_string(),
            "--ui-listen",
            &ui.to_string(),
            "--router-addr",
            &format!("http://127.0.0.1:{router_port}"),
            "--concurrency",
            "2",
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--workspace-root",
            workspaces.to_str().unwrap(),
            "--git-remote-template",
            &remotes.template(),
            "--agent-max-call-cost",
            "0.003",
        ],
        &[("REDIS_URL", &redis.url())],
    );
    assert!(
        test_support::wait_for_grpc_serving(
            grpc,
            "taskrouter.v1.Executor",
            Duration::from_secs(30)
        )
        .await,
        "executor never became SERVING: {}",
        executor.log_contents()
    );
    let mut client = ExecutorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for (t, budget) in [
        (
            gov_task("GOV-GATE", "deploy the api to production", 2),
            None,
        ),
        (
            gov_task("GOV-WAIT", "deploy the worker to production", 2),
            None,
        ),
        // A call reserves $0.003 and costs about $0.002: the second does not fit $0.005.
        (gov_task("GOV-BUDGET", "fix a small bug", 10), Some(0.005)),
    ] {
        client
            .submit(authed(SubmitRequest {
                task: Some(t),
                use_multi_agent: Some(false),
                budget_usd: budget,
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    wait_state(&mut client, "GOV-GATE", TaskStatus::WaitingApproval).await;
    wait_state(&mut client, "GOV-WAIT", TaskStatus::WaitingApproval).await;
    let stopped = wait_state(&mut client, "GOV-BUDGET", TaskStatus::BudgetExhausted).await;
    assert!(stopped.iteration_count >= 1, "the first call fitted");

    let base = format!("http://{ui}");
    let shots = workspace_root().join("target");
    let rt = tokio::runtime::Handle::current();
    let branch = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch();
        let page = log_in(&mut b, &base);
        let gate_state = |id: &str| {
            format!(
                "(document.querySelector('#approvals tr[data-gate=\"before_start\"] .gate-state') || {{textContent: ''}}).textContent.startsWith('{id}')"
            )
        };

        // A pending gate: what raised it, until when.
        b.navigate(&page, &format!("{base}/tasks/GOV-WAIT"));
        b.wait_for(&page, &gate_state("pending"), Duration::from_secs(30));
        let row = b.eval(
            &page,
            "document.querySelector('#approvals tr[data-gate=\"before_start\"]').innerText",
        );
        let row = row.as_str().unwrap();
        assert!(row.contains("DEPLOYMENT"), "{row}");
        assert!(row.contains("3600s, then reject"), "{row}");
        assert!(row.contains("until 20"), "the deadline is shown: {row}");

        // Approved while the page is open: it changes in place, naming the approver.
        b.navigate(&page, &format!("{base}/tasks/GOV-GATE"));
        b.wait_for(&page, &gate_state("pending"), Duration::from_secs(30));
        b.eval(&page, "window.__sameDocument = true; true");
        rt.block_on(async {
            client
                .approve(authed(DecisionRequest {
                    task_id: "GOV-GATE".into(),
                    gate: ApprovalGate::BeforeStart as i32,
                    comment: COMMENT.into(),
                }))
                .await
                .unwrap();
        });
        // The branches section is refetched at most every 2 s: it may show the task's
        // previous commit for a moment after the status turned COMPLETED.
        b.wait_for(
            &page,
            &format!(
                "window.__sameDocument === true && {} \
                 && document.querySelector('#approvals tr[data-gate=\"before_start\"] .decided-by').textContent === 'oncall' \
                 && document.getElementById('status').textContent === 'COMPLETED' \
                 && document.getElementById('status').className === 'status-COMPLETED' \
                 && document.querySelector('#workspace tr[data-branch]') !== null \
                 && document.querySelector('#workspace tr[data-branch]').cells[5].textContent === 'changed'",
                gate_state("approved")
            ),
            Duration::from_secs(30),
        );
        let decisions = b.eval(&page, "document.getElementById('decisions').innerText");
        let decisions = decisions.as_str().unwrap();
        assert!(decisions.contains("approved") && decisions.contains("oncall"), "{decisions}");
        // The branch as the page shows it: task, repo, branch, base and final commit.
        let shown = b.eval(
            &page,
            "(() => { const r = document.querySelector('#workspace tr[data-branch]'); \
             const codes = r.querySelectorAll('code[title]'); \
             return [r.cells[0].textContent, r.cells[1].textContent, r.dataset.branch, \
                     codes[0].title, codes[1].title, r.cells[5].textContent]; })()",
        );
        let shown: Vec<String> = serde_json::from_value(shown).unwrap();
        assert_eq!(shown[0], "task");
        assert_eq!(shown[1], "app");
        assert!(shown[2].contains("GOV-GATE"), "{shown:?}");
        assert_eq!(shown[3].len(), 40, "{shown:?}");
        assert_ne!(shown[3], shown[4], "the task committed: {shown:?}");
        assert_eq!(shown[5], "changed");
        let html = b.eval(&page, "document.documentElement.outerHTML");
        let html = html.as_str().unwrap();
        assert!(!html.contains("PATIENT-7731"), "no description anywhere");
        assert!(!html.contains("COMMENT-5521"), "no approver comment without the flag");
        b.eval(&page, "document.getElementById('approvals').scrollIntoView(); true");
        b.screenshot(&page, &shots.join("dashboard-approval.png"));

        // The budget that stopped a task, its spend, and the tenant's.
        b.navigate(&page, &format!("{base}/tasks/GOV-BUDGET"));
        let budget = b.eval(&page, "document.getElementById('budget').innerText");
        let budget = budget.as_str().unwrap();
        for want in [
            "Task budget\n$0.0050",
            "Tenant\nacme",
            "Tenant budget per UTC day\n$2.5000",
            "Stopped by\nthe task's budget ($0.0050)",
        ] {
            assert!(budget.contains(want), "{want:?} not in {budget}");
        }
        assert_eq!(
            b.eval(&page, "document.getElementById('status').textContent"),
            serde_json::json!("BUDGET_EXHAUSTED")
        );
        b.eval(&page, "document.getElementById('budget').scrollIntoView(); true");
        b.screenshot(&page, &shots.join("dashboard-budget.png"));
        (shown[2].clone(), shown[4].clone())
    })
    .await
    .unwrap();
    // What the page calls the final commit is the branch's tip on the remote.
    assert_eq!(
        remotes.tip("app", &branch.0).as_deref(),
        Some(branch.1.as_str())
    );
}
