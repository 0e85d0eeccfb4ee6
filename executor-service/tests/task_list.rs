//! `List` and `ListIterations` over real gRPC against a real redis-server: what a user
//! sees after running tasks, and the bad input they get named back.

mod common;

use common::Harness;
use std::time::Duration;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, ListIterationsRequest, ListTasksRequest, ReasonCode, RunRequest,
    SubmitRequest, TaskStatus,
};
use test_support::client::{sim_task, wait_final};
use tonic::Code;

fn field_of(status: &tonic::Status) -> Vec<String> {
    service_kit::validation::field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn a_finished_run_is_listed_before_the_call_returns_and_pages_are_exact() {
    let mut h = Harness::start(|c| c.settings.concurrency = 0).await;
    for i in 0..7 {
        let mut task = sim_task(&format!("LIST-{i}"), Complexity::Low, 2, &[]);
        task.labels.insert(
            "tenant".into(),
            if i % 2 == 0 { "acme" } else { "globex" }.into(),
        );
        h.client
            .run(RunRequest {
                task: Some(task),
                resume: false,
                max_iterations: 5,
                use_multi_agent: None,
                budget_usd: None,
            })
            .await
            .unwrap();
        // Visible at once, no polling.
        let page = h
            .client
            .list(ListTasksRequest {
                statuses: vec![TaskStatus::Completed as i32],
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.tasks[0].task_id, format!("LIST-{i}"));
        assert_eq!(page.total, i + 1);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .list(ListTasksRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let completed = page
            .counts
            .iter()
            .find(|c| c.status == TaskStatus::Completed as i32)
            .unwrap();
        assert_eq!(completed.count, 4);
        for t in &page.tasks {
            assert_eq!(t.tenant, "acme");
            assert_eq!(t.iteration_count, 2);
            assert_eq!(t.path, ExecutionPath::SingleAgent as i32);
            assert_eq!(t.reasons, vec![ReasonCode::RouterUnavailable as i32]);
        }
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["LIST-6", "LIST-4", "LIST-2", "LIST-0"]);
    // The summary carries no description.
    let raw = h
        .client
        .list(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    let bytes = prost::Message::encode_to_vec(&raw);
    assert!(!String::from_utf8_lossy(&bytes).contains("simulated task"));
    h.stop().await;
}

#[tokio::test]
async fn a_long_iteration_log_reads_whole_in_pages() {
    let mut h = Harness::start(|c| c.settings.concurrency = 0).await;
    let task = sim_task("ITER-1", Complexity::Low, 250, &[]);
    h.client
        .run(RunRequest {
            task: Some(task),
            resume: false,
            max_iterations: 250,
            use_multi_agent: None,
            budget_usd: None,
        })
        .await
        .unwrap();
    let mut numbers = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .list_iterations(ListIterationsRequest {
                task_id: "ITER-1".into(),
                page_size: 100,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 250);
        numbers.extend(page.iterations.iter().map(|r| r.iteration));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(numbers, (1..=250).collect::<Vec<_>>());
    let missing = h
        .client
        .list_iterations(ListIterationsRequest {
            task_id: "NOPE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn bad_list_input_is_invalid_argument_naming_the_field() {
    let mut h = Harness::start(|_| {}).await;
    for i in 0..3 {
        h.client
            .submit(SubmitRequest {
                task: Some(sim_task(&format!("BAD-{i}"), Complexity::Low, 1, &[])),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    wait_final(&mut h.client, "BAD-2", Duration::from_secs(20)).await;
    let t = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let cases: Vec<(ListTasksRequest, &str)> = vec![
        (
            ListTasksRequest {
                statuses: vec![42],
                ..Default::default()
            },
            "statuses[0]",
        ),
        (
            ListTasksRequest {
                statuses: vec![0],
                ..Default::default()
            },
            "statuses[0]",
        ),
        (
            ListTasksRequest {
                path: 9,
                ..Default::default()
            },
            "path",
        ),
        (
            ListTasksRequest {
                reason: 99,
                ..Default::default()
            },
            "reason",
        ),
        (
            ListTasksRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListTasksRequest {
                created_after: t(200),
                created_before: t(100),
                ..Default::default()
            },
            "created_before",
        ),
        (
            ListTasksRequest {
                updated_after: t(200),
                updated_before: t(200),
                ..Default::default()
            },
            "updated_before",
        ),
        (
            ListTasksRequest {
                page_token: "zz-not-a-token".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ];
    for (req, field) in cases {
        let err = h.client.list(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert_eq!(field_of(&err), [field], "{req:?}");
    }
    // A real token: altered by one byte, or used with another filter, is refused.
    let page = h
        .client
        .list(ListTasksRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = page.next_page_token;
    assert!(!token.is_empty());
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 40;
    forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
    for (tok, tenant) in [
        (String::from_utf8(forged).unwrap(), ""),
        (token.clone(), "acme"),
    ] {
        let err = h
            .client
            .list(ListTasksRequest {
                page_size: 1,
                page_token: tok,
                tenant: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(&err), ["page_token"]);
    }
    // The untouched token still works, from any replica sharing the store.
    let next = h
        .client
        .list(ListTasksRequest {
            page_size: 1,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.tasks.len(), 1);
    assert_ne!(next.tasks[0].task_id, page.tasks[0].task_id);
    // ListIterations checks its page size the same way.
    let err = h
        .client
        .list_iterations(ListIterationsRequest {
            task_id: "BAD-0".into(),
            page_size: 2000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["page_size"]);
    h.stop().await;
}
