//! One conformance suite for every [`SessionStore`] and [`WorkQueue`] implementation:
//! the same behaviour is required of Redis and of the in-memory store used by the demo.

use executor_service::Error;
use executor_service::queue::WorkQueue;
use executor_service::session::Lease;
use executor_service::session::governance::{
    Refusal, Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantHold, TenantSpend,
};
use executor_service::session::{
    Checkpoint, CreateOutcome, Cursor, ListPage, ListQuery, SessionStore, TaskFilter,
    UnreservedSpend,
};
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{
    ExecutionPath, Finished, IterationRecord, ProgressEvent, ReasonCode, RoutingAnalysis,
    RoutingReason, SessionState, Submitted, Task, TaskStatus, progress_event,
};

/// What a backend provides to the suite; `_guard` keeps its resources alive.
pub struct Backend {
    pub store: Arc<dyn SessionStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub _guard: Box<dyn std::any::Any + Send>,
}

fn state(id: &str) -> SessionState {
    SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: id.into(),
        task: Some(Task {
            id: id.into(),
            description: "conformance".into(),
            complexity: 1,
            ..Default::default()
        }),
        status: TaskStatus::Pending as i32,
        max_iterations: 10,
        ..Default::default()
    }
}

fn submitted(id: &str) -> ProgressEvent {
    ProgressEvent {
        task_id: id.into(),
        kind: Some(progress_event::Kind::Submitted(Submitted {})),
        ..Default::default()
    }
}

fn record(n: u32) -> IterationRecord {
    IterationRecord {
        iteration: n,
        role: "agent".into(),
        output: format!("out {n}"),
        ..Default::default()
    }
}

async fn created(b: &Backend, id: &str) -> SessionState {
    match b.store.create(&state(id), &submitted(id)).await.unwrap() {
        CreateOutcome::Created(s) => s,
        CreateOutcome::Existing(_) => panic!("{id} existed"),
    }
}

async fn lease(b: &Backend, id: &str, owner: &str, ttl_ms: u64) -> Option<Lease> {
    b.store
        .acquire_lease(id, owner, Duration::from_millis(ttl_ms))
        .await
        .unwrap()
}

async fn write(b: &Backend, s: &SessionState, expected: u64, l: &Lease) -> Result<u64, Error> {
    b.store
        .checkpoint(Checkpoint {
            state: s,
            expected_version: expected,
            lease: l,
            iteration: None,
            events: &[],
            archive_ttl: None,
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .map(|o| o.version)
}

pub async fn create_is_idempotent(b: Backend) {
    let first = created(&b, "C-1").await;
    assert_eq!(first.version, 1);
    let mut other = state("C-1");
    other.max_iterations = 99;
    match b.store.create(&other, &submitted("C-1")).await.unwrap() {
        CreateOutcome::Existing(s) => {
            assert_eq!(s.max_iterations, 10, "the first state is kept");
            assert_eq!(s.version, 1);
        }
        CreateOutcome::Created(_) => panic!("second create must not overwrite"),
    }
    assert!(b.store.load("C-unknown").await.unwrap().is_none());
}

pub async fn the_task_is_stored_once_and_survives_checkpoints_without_it(b: Backend) {
    let mut s = created(&b, "T-1").await;
    let l = lease(&b, "T-1", "w", 5_000).await.unwrap();
    s.task = None;
    s.iteration_count = 1;
    write(&b, &s, 1, &l).await.unwrap();
    let loaded = b.store.load("T-1").await.unwrap().unwrap();
    assert_eq!(loaded.iteration_count, 1);
    assert_eq!(loaded.task.unwrap().description, "conformance");
}

pub async fn a_stale_version_is_rejected(b: Backend) {
    let s = created(&b, "V-1").await;
    let l = lease(&b, "V-1", "w1", 5_000).await.unwrap();
    assert_eq!(write(&b, &s, 1, &l).await.unwrap(), 2);
    let err = write(&b, &s, 1, &l).await.unwrap_err();
    assert!(matches!(err, Error::StaleWrite { .. }), "{err:?}");
    assert_eq!(b.store.load("V-1").await.unwrap().unwrap().version, 2);
}

pub async fn a_worker_that_lost_its_lease_cannot_write(b: Backend) {
    let mut s = created(&b, "L-1").await;
    let a = lease(&b, "L-1", "worker-a", 150).await.unwrap();
    assert!(
        lease(&b, "L-1", "worker-b", 5_000).await.is_none(),
        "lease is exclusive"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bl = lease(&b, "L-1", "worker-b", 5_000)
        .await
        .expect("expired lease is free");
    assert!(
        bl.fencing_token > a.fencing_token,
        "fencing tokens increase"
    );
    s.iteration_count = 1;
    assert_eq!(write(&b, &s, 1, &bl).await.unwrap(), 2);
    // The paused worker wakes up and tries to write with what it last saw.
    let mut stale = s.clone();
    stale.iteration_count = 7;
    let err = write(&b, &stale, 2, &a).await.unwrap_err();
    assert!(matches!(err, Error::StaleWrite { .. }), "{err:?}");
    // Even holding the owner string, an older fencing token is refused.
    let forged = Lease {
        fencing_token: a.fencing_token,
        ..bl.clone()
    };
    let err = write(&b, &stale, 2, &forged).await.unwrap_err();
    assert!(matches!(err, Error::StaleWrite { .. }), "{err:?}");
    assert_eq!(
        b.store.load("L-1").await.unwrap().unwrap().iteration_count,
        1
    );
}

pub async fn leases_renew_and_release_only_for_their_owner(b: Backend) {
    created(&b, "R-1").await;
    let a = lease(&b, "R-1", "a", 300).await.unwrap();
    let not_a = Lease {
        owner: "b".into(),
        ..a.clone()
    };
    assert!(!b.store.renew_lease(&not_a).await.unwrap());
    b.store.release_lease(&not_a).await.unwrap();
    assert!(
        lease(&b, "R-1", "b", 300).await.is_none(),
        "b's release did not free a's lease"
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(b.store.renew_lease(&a).await.unwrap());
    }
    assert!(
        lease(&b, "R-1", "b", 300).await.is_none(),
        "renewed lease still held"
    );
    b.store.release_lease(&a).await.unwrap();
    assert!(lease(&b, "R-1", "b", 300).await.is_some());
}

pub async fn the_iteration_log_appends_and_reads_recent_first_to_last(b: Backend) {
    let mut s = created(&b, "I-1").await;
    let l = lease(&b, "I-1", "w", 5_000).await.unwrap();
    let mut v = s.version;
    for n in 1..=12 {
        s.iteration_count = n;
        v = b
            .store
            .checkpoint(Checkpoint {
                state: &s,
                expected_version: v,
                lease: &l,
                iteration: Some(&record(n)),
                events: &[],
                archive_ttl: None,
                unreserved_spend: Default::default(),
                index: None,
            })
            .await
            .unwrap()
            .version;
    }
    let recent = b.store.iterations("I-1", 5).await.unwrap();
    let numbers: Vec<u32> = recent.iter().map(|r| r.iteration).collect();
    assert_eq!(numbers, vec![8, 9, 10, 11, 12]);
    assert_eq!(b.store.iterations("I-1", 100).await.unwrap().len(), 12);
    assert_eq!(
        b.store.load("I-1").await.unwrap().unwrap().iteration_count,
        12
    );
}

pub async fn events_are_sequenced_and_readable_after_a_cursor(b: Backend) {
    let s = created(&b, "E-1").await;
    let l = lease(&b, "E-1", "w", 5_000).await.unwrap();
    let fin = ProgressEvent {
        task_id: "E-1".into(),
        kind: Some(progress_event::Kind::Finished(Finished::default())),
        ..Default::default()
    };
    b.store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 1,
            lease: &l,
            iteration: None,
            events: &[submitted("E-1"), fin.clone()],
            archive_ttl: None,
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    let all = b.store.events_after("E-1", None, 100).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.event.sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let rest = b
        .store
        .events_after("E-1", Some(&all[0].cursor), 100)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(matches!(
        rest[1].event.kind,
        Some(progress_event::Kind::Finished(_))
    ));
    assert!(
        b.store
            .events_after("E-1", Some(&all[2].cursor), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_cancel_request_is_reported_by_the_next_checkpoint(b: Backend) {
    let s = created(&b, "X-1").await;
    let l = lease(&b, "X-1", "w", 5_000).await.unwrap();
    let o = b
        .store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 1,
            lease: &l,
            iteration: None,
            events: &[],
            archive_ttl: None,
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    assert!(!o.cancel_requested);
    b.store
        .request_cancel("X-1", Duration::from_secs(60))
        .await
        .unwrap();
    let o = b
        .store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 2,
            lease: &l,
            iteration: None,
            events: &[],
            archive_ttl: None,
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    assert!(o.cancel_requested);
}

pub async fn archiving_expires_the_task_after_its_ttl(b: Backend) {
    let s = created(&b, "A-1").await;
    let l = lease(&b, "A-1", "w", 5_000).await.unwrap();
    b.store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 1,
            lease: &l,
            iteration: Some(&record(1)),
            events: &[],
            archive_ttl: Some(Duration::from_millis(300)),
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    assert!(
        b.store.load("A-1").await.unwrap().is_some(),
        "readable while archived"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(b.store.load("A-1").await.unwrap().is_none());
    assert!(b.store.iterations("A-1", 10).await.unwrap().is_empty());
}

pub async fn queue_delivers_each_entry_once_and_reclaims_idle_ones(b: Backend) {
    let q = &b.queue;
    q.ensure_group().await.unwrap();
    q.ensure_group().await.unwrap();
    for i in 0..3 {
        q.enqueue(&format!("Q-{i}"), "", b"").await.unwrap();
    }
    let a = q.read_new(0, "a", 2, None).await.unwrap();
    let c = q.read_new(0, "c", 5, None).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(c.len(), 1);
    let mut ids: Vec<String> = a.iter().chain(&c).map(|d| d.task_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["Q-0", "Q-1", "Q-2"]);
    assert!(a.iter().all(|d| d.delivery_count == 1));
    assert!(q.read_new(0, "c", 5, None).await.unwrap().is_empty());
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.pending, 3);

    q.ack(&c[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // a keeps one entry alive with a heartbeat; the other looks abandoned.
    q.touch("a", &a[0]).await.unwrap();
    let got = q
        .reclaim(0, "c", Duration::from_millis(200), 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].task_id, a[1].task_id);
    assert_eq!(got[0].delivery_count, 2);

    q.dead_letter(&got[0], "gave up").await.unwrap();
    q.ack(&a[0]).await.unwrap();
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.pending, 0);
    assert_eq!(depth.length, 0);
}

fn at_ms(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// Creates `id` and checkpoints it to `status`, last updated at `updated_ms`.
async fn stored_as(
    b: &Backend,
    id: &str,
    status: TaskStatus,
    updated_ms: i64,
    tenant: &str,
    multi: bool,
) {
    let mut s = state(id);
    s.created_at = at_ms(updated_ms - 500);
    s.updated_at = s.created_at;
    if let Some(t) = s.task.as_mut() {
        t.labels.insert("tenant".into(), tenant.into());
    }
    let CreateOutcome::Created(mut s) = b.store.create(&s, &submitted(id)).await.unwrap() else {
        panic!("{id} existed");
    };
    let l = lease(b, id, "w", 5_000).await.unwrap();
    s.status = status as i32;
    s.updated_at = at_ms(updated_ms);
    s.task = None;
    s.path = if multi {
        ExecutionPath::MultiAgent
    } else {
        ExecutionPath::SingleAgent
    } as i32;
    s.analysis = Some(RoutingAnalysis {
        decision: if multi { 2 } else { 1 },
        reasons: vec![RoutingReason {
            code: if multi {
                ReasonCode::HighComplexity
            } else {
                ReasonCode::SimpleTask
            } as i32,
            message: "m".into(),
        }],
        policy_version: if multi { "p2" } else { "p1" }.into(),
        ..Default::default()
    });
    write(b, &s, 1, &l).await.unwrap();
}

fn query(filter: TaskFilter, page_size: usize, after: Option<Cursor>) -> ListQuery {
    ListQuery {
        filter,
        page_size,
        after,
    }
}

fn ids(p: &ListPage) -> Vec<&str> {
    p.tasks.iter().map(|t| t.state.task_id.as_str()).collect()
}

fn count(p: &ListPage, s: TaskStatus) -> u64 {
    p.counts
        .iter()
        .find(|(st, _)| *st == s)
        .map_or(0, |(_, n)| *n)
}

pub async fn list_pages_in_update_order_with_exact_counts(b: Backend) {
    use TaskStatus::*;
    // Same update time for L-3 and L-4: the id breaks the tie, and no page repeats or
    // skips one.
    for (i, (id, st, at)) in [
        ("L-1", InProgress, 1_000),
        ("L-2", Completed, 2_000),
        ("L-3", InProgress, 3_000),
        ("L-4", InProgress, 3_000),
        ("L-5", Failed, 5_000),
        ("L-6", InProgress, 6_000),
    ]
    .into_iter()
    .enumerate()
    {
        stored_as(&b, id, st, 1_700_000_000_000 + at, "acme", i % 2 == 0).await;
    }
    let all = b
        .store
        .list(&query(TaskFilter::default(), 10, None))
        .await
        .unwrap();
    assert_eq!(ids(&all), ["L-6", "L-5", "L-4", "L-3", "L-2", "L-1"]);
    assert!(all.next.is_none());
    assert_eq!(count(&all, InProgress), 4);
    assert_eq!(count(&all, Completed), 1);
    assert_eq!(count(&all, Failed), 1);
    assert_eq!(count(&all, Pending), 0);
    assert!(all.tasks.iter().all(|t| t.tenant == "acme"));
    assert!(all.tasks.iter().all(|t| t.state.task.is_none()));

    let running = TaskFilter {
        statuses: vec![InProgress],
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b
            .store
            .list(&query(running.clone(), 1, after))
            .await
            .unwrap();
        assert_eq!(page.counts, vec![(InProgress, 4)]);
        seen.extend(ids(&page).into_iter().map(String::from));
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["L-6", "L-4", "L-3", "L-1"]);

    // A transition is listed at once: L-1 finishes and leaves the running set.
    let mut s = b.store.load("L-1").await.unwrap().unwrap();
    // The lease "w" took in `stored_as` (the first, so fencing token 1).
    let l = Lease {
        task_id: "L-1".into(),
        owner: "w".into(),
        fencing_token: 1,
        ttl: Duration::from_secs(5),
    };
    s.status = Completed as i32;
    s.updated_at = at_ms(1_700_000_009_000);
    write(&b, &s, 2, &l).await.unwrap();
    let page = b
        .store
        .list(&query(running.clone(), 10, None))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["L-6", "L-4", "L-3"]);
    let done = b
        .store
        .list(&query(
            TaskFilter {
                statuses: vec![Completed],
                ..Default::default()
            },
            10,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&done), ["L-1", "L-2"]);
}

pub async fn list_filters_combine(b: Backend) {
    use TaskStatus::*;
    stored_as(&b, "F-1", InProgress, 1_700_000_001_000, "acme", true).await;
    stored_as(&b, "F-2", InProgress, 1_700_000_002_000, "globex", true).await;
    stored_as(&b, "F-3", Completed, 1_700_000_003_000, "acme", false).await;
    stored_as(&b, "F-4", InProgress, 1_700_000_004_000, "acme", false).await;
    let list = |f: TaskFilter| {
        let store = b.store.clone();
        async move { store.list(&query(f, 10, None)).await.unwrap() }
    };
    let acme = list(TaskFilter {
        tenant: Some("acme".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&acme), ["F-4", "F-3", "F-1"]);
    assert_eq!(count(&acme, InProgress), 2);
    assert_eq!(count(&acme, Completed), 1);
    let multi_acme_running = list(TaskFilter {
        tenant: Some("acme".into()),
        path: Some(ExecutionPath::MultiAgent),
        statuses: vec![InProgress],
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&multi_acme_running), ["F-1"]);
    assert_eq!(multi_acme_running.counts, vec![(InProgress, 1)]);
    let simple = list(TaskFilter {
        reason: Some(ReasonCode::SimpleTask),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&simple), ["F-4", "F-3"]);
    let p2 = list(TaskFilter {
        policy_version: Some("p2".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&p2), ["F-2", "F-1"]);
    let window = list(TaskFilter {
        updated_from_ms: Some(1_700_000_002_000),
        updated_to_ms: Some(1_700_000_004_000),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&window), ["F-3", "F-2"]);
    assert_eq!(count(&window, InProgress), 1);
    let created = list(TaskFilter {
        created_from_ms: Some(1_700_000_003_000),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&created), ["F-4"]);
    let nobody = list(TaskFilter {
        tenant: Some("initech".into()),
        ..Default::default()
    })
    .await;
    assert!(nobody.tasks.is_empty());
    assert_eq!(nobody.counts.iter().map(|(_, n)| n).sum::<u64>(), 0);
}

/// Every page of a listing from the first, with the counts each page reported.
async fn all_pages(b: &Backend, f: &TaskFilter, page_size: usize) -> (Vec<String>, Vec<ListPage>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = b
            .store
            .list(&query(f.clone(), page_size, after))
            .await
            .unwrap();
        seen.extend(ids(&page).into_iter().map(String::from));
        after = page.next.clone();
        pages.push(page);
        if after.is_none() {
            return (seen, pages);
        }
    }
}

pub async fn list_by_status_and_tenant_pages_counts_and_follows_changes(b: Backend) {
    use TaskStatus::*;
    const T: i64 = 1_700_000_000_000;
    // S-4 and S-5 share an update time: the id breaks the tie across pages.
    for (id, st, at, tenant, multi) in [
        ("S-1", InProgress, 1_000, "acme", true),
        ("S-2", Pending, 2_000, "acme", false),
        ("S-3", InProgress, 3_000, "globex", true),
        ("S-4", InProgress, 4_000, "acme", false),
        ("S-5", InProgress, 4_000, "acme", true),
        ("S-6", Completed, 6_000, "acme", false),
        ("S-7", InProgress, 7_000, "", false),
    ] {
        stored_as(&b, id, st, T + at, tenant, multi).await;
    }
    let acme = |statuses: Vec<TaskStatus>| TaskFilter {
        statuses,
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let open = acme(vec![Pending, InProgress]);
    for size in [1, 3, 10] {
        let (seen, pages) = all_pages(&b, &open, size).await;
        assert_eq!(seen, ["S-5", "S-4", "S-2", "S-1"], "page size {size}");
        for p in &pages {
            assert_eq!(p.counts, vec![(Pending, 1), (InProgress, 3)]);
            assert!(p.tasks.iter().all(|t| t.tenant == "acme"));
        }
    }
    let page = |f: TaskFilter| {
        let store = b.store.clone();
        async move { store.list(&query(f, 10, None)).await.unwrap() }
    };
    let globex = page(TaskFilter {
        tenant: Some("globex".into()),
        ..acme(vec![InProgress])
    })
    .await;
    assert_eq!(ids(&globex), ["S-3"]);
    assert_eq!(globex.counts, vec![(InProgress, 1)]);
    // Filters the status x tenant sets do not cover still narrow the page and its counts.
    let multi = page(TaskFilter {
        path: Some(ExecutionPath::MultiAgent),
        ..acme(vec![InProgress])
    })
    .await;
    assert_eq!(ids(&multi), ["S-5", "S-1"]);
    assert_eq!(multi.counts, vec![(InProgress, 2)]);
    let window = page(TaskFilter {
        updated_from_ms: Some(T + 2_000),
        updated_to_ms: Some(T + 5_000),
        ..open.clone()
    })
    .await;
    assert_eq!(ids(&window), ["S-5", "S-4", "S-2"]);
    assert_eq!(window.counts, vec![(Pending, 1), (InProgress, 2)]);
    let recent = page(TaskFilter {
        created_from_ms: Some(T + 3_000),
        ..open.clone()
    })
    .await;
    assert_eq!(ids(&recent), ["S-5", "S-4"]);
    assert_eq!(recent.counts, vec![(Pending, 0), (InProgress, 2)]);

    // S-4 finishes: it moves from the running listing to the finished one at once.
    // (The lease "w" took in `stored_as`, the first, so fencing token 1.)
    let lease_of = |id: &str| Lease {
        task_id: id.into(),
        owner: "w".into(),
        fencing_token: 1,
        ttl: Duration::from_secs(5),
    };
    let mut s = b.store.load("S-4").await.unwrap().unwrap();
    s.status = Completed as i32;
    s.updated_at = at_ms(T + 9_000);
    write(&b, &s, 2, &lease_of("S-4")).await.unwrap();
    let (seen, pages) = all_pages(&b, &open, 2).await;
    assert_eq!(seen, ["S-5", "S-2", "S-1"]);
    assert_eq!(pages[0].counts, vec![(Pending, 1), (InProgress, 2)]);
    let done = page(acme(vec![Completed])).await;
    assert_eq!(ids(&done), ["S-4", "S-6"]);
    assert_eq!(done.counts, vec![(Completed, 2)]);

    // S-2 finishes archived: listed until its archive expires, then gone everywhere.
    let mut s = b.store.load("S-2").await.unwrap().unwrap();
    s.status = Completed as i32;
    s.updated_at = at_ms(T + 10_000);
    b.store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 2,
            lease: &lease_of("S-2"),
            iteration: None,
            events: &[],
            archive_ttl: Some(Duration::from_millis(300)),
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    let done = page(acme(vec![Completed, Pending])).await;
    assert_eq!(ids(&done), ["S-2", "S-4", "S-6"]);
    assert_eq!(done.counts, vec![(Pending, 0), (Completed, 3)]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let done = page(acme(vec![Completed, Pending])).await;
    assert_eq!(ids(&done), ["S-4", "S-6"]);
    assert_eq!(done.counts, vec![(Pending, 0), (Completed, 2)]);
    let (seen, pages) = all_pages(&b, &open, 1).await;
    assert_eq!(seen, ["S-5", "S-1"]);
    assert_eq!(pages[0].counts, vec![(Pending, 0), (InProgress, 2)]);
}

/// Creates `id` and archives it COMPLETED for `ttl`.
async fn completed_and_archived(b: &Backend, id: &str, ttl: Duration) {
    let mut done = created(b, id).await;
    let l = lease(b, id, "w", 5_000).await.unwrap();
    done.status = TaskStatus::Completed as i32;
    b.store
        .checkpoint(Checkpoint {
            state: &done,
            expected_version: 1,
            lease: &l,
            iteration: None,
            events: &[],
            archive_ttl: Some(ttl),
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
}

pub async fn archived_tasks_leave_the_list_when_they_expire(b: Backend) {
    // Long enough to list it first on a loaded machine.
    completed_and_archived(&b, "X-1", Duration::from_millis(1_500)).await;
    let all = TaskFilter::default();
    let page = b.store.list(&query(all.clone(), 10, None)).await.unwrap();
    assert_eq!(ids(&page), ["X-1"]);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let page = b.store.list(&query(all, 10, None)).await.unwrap();
    assert!(page.tasks.is_empty(), "{page:?}");
    assert_eq!(count(&page, TaskStatus::Completed), 0);
}

pub async fn the_iteration_log_reads_whole_in_pages(b: Backend) {
    let s = created(&b, "P-1").await;
    let l = lease(&b, "P-1", "w", 5_000).await.unwrap();
    let mut version = 1;
    for n in 1..=25 {
        version = b
            .store
            .checkpoint(Checkpoint {
                state: &s,
                expected_version: version,
                lease: &l,
                iteration: Some(&record(n)),
                events: &[],
                archive_ttl: None,
                unreserved_spend: Default::default(),
                index: None,
            })
            .await
            .unwrap()
            .version;
    }
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let (page, total) = b.store.iterations_page("P-1", offset, 10).await.unwrap();
        assert_eq!(total, 25);
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        got.extend(page.into_iter().map(|r| r.iteration));
    }
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
    let (none, total) = b.store.iterations_page("nope", 0, 10).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(total, 0);
}

pub async fn rebuilding_the_indexes_keeps_the_listing(b: Backend) {
    stored_as(
        &b,
        "R-1",
        TaskStatus::InProgress,
        1_700_000_001_000,
        "acme",
        true,
    )
    .await;
    stored_as(&b, "R-2", TaskStatus::Failed, 1_700_000_002_000, "", false).await;
    let before = b
        .store
        .list(&query(TaskFilter::default(), 10, None))
        .await
        .unwrap();
    assert_eq!(b.store.rebuild_indexes().await.unwrap(), 2);
    let after = b
        .store
        .list(&query(TaskFilter::default(), 10, None))
        .await
        .unwrap();
    assert_eq!(before, after);
    let acme = b
        .store
        .list(&query(
            TaskFilter {
                tenant: Some("acme".into()),
                ..Default::default()
            },
            10,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&acme), ["R-1"]);
}

fn spend_request<'a>(
    id: &'a str,
    owner: &'a str,
    rid: &str,
    min: i64,
    task_limit: i64,
    tenant_limit: i64,
) -> SpendRequest<'a> {
    SpendRequest {
        task_id: id,
        owner,
        reservation_id: rid.into(),
        min_amount: min,
        task_limit,
        tenant: Some(TenantHold {
            tenant: "acme".into(),
            day: "2026-01-01".into(),
            limit: tenant_limit,
        }),
        hold_ttl: Duration::from_secs(60),
    }
}

fn reserved(o: SpendOutcome) -> Reservation {
    match o {
        SpendOutcome::Reserved(r) => r,
        other => panic!("not reserved: {other:?}"),
    }
}

pub async fn spend_is_reserved_against_task_and_tenant_and_settled(b: Backend) {
    created(&b, "S-1").await;
    let l = lease(&b, "S-1", "w1", 5000).await.unwrap();
    let st = &b.store;
    // Only the lease holder may reserve.
    let stranger = st
        .reserve_spend(&spend_request("S-1", "w2", "r0", 100, 1000, 0))
        .await
        .unwrap();
    assert_eq!(stranger, SpendOutcome::NotLeaseHolder);
    let r1 = reserved(
        st.reserve_spend(&spend_request("S-1", &l.owner, "r1", 300, 1000, 10_000))
            .await
            .unwrap(),
    );
    let r2 = reserved(
        st.reserve_spend(&spend_request("S-1", &l.owner, "r2", 300, 1000, 10_000))
            .await
            .unwrap(),
    );
    assert_eq!((r1.amount, r2.amount), (300, 300));
    // 600 held + 300 > 1000: the task budget refuses.
    let refused = st
        .reserve_spend(&spend_request("S-1", &l.owner, "r3", 500, 1000, 10_000))
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            SpendOutcome::Refused {
                by: Refusal::Task,
                spent: 0,
                limit: 1000,
                amount: 500
            }
        ),
        "{refused:?}"
    );
    st.settle_spend(&r1, 450).await.unwrap();
    st.settle_spend(&r2, 0).await.unwrap();
    let spend = st.task_spend("S-1").await.unwrap();
    assert_eq!(
        spend,
        TaskSpend {
            spent: 450,
            held: 0,
            max_call: 450
        }
    );
    // The costliest call so far raises the reservation.
    let r4 = reserved(
        st.reserve_spend(&spend_request("S-1", &l.owner, "r4", 100, 1000, 10_000))
            .await
            .unwrap(),
    );
    assert_eq!(r4.amount, 450);
    assert_eq!(
        st.tenant_spend("acme", "2026-01-01").await.unwrap(),
        TenantSpend {
            spent: 450,
            held: 450
        }
    );
    // The tenant refuses what the task would allow; the task's hold is given back.
    let tight = st
        .reserve_spend(&spend_request("S-1", &l.owner, "r5", 100, 0, 1000))
        .await
        .unwrap();
    assert!(
        matches!(
            tight,
            SpendOutcome::Refused {
                by: Refusal::Tenant,
                ..
            }
        ),
        "{tight:?}"
    );
    assert_eq!(st.task_spend("S-1").await.unwrap().held, 450);
    st.settle_spend(&r4, 450).await.unwrap();
    assert_eq!(
        st.tenant_spend("acme", "2026-01-01").await.unwrap(),
        TenantSpend {
            spent: 900,
            held: 0
        }
    );
}

pub async fn a_dead_holders_reservations_are_released_by_the_next_lease(b: Backend) {
    created(&b, "S-2").await;
    let st = &b.store;
    let dead = lease(&b, "S-2", "w1", 300).await.unwrap();
    reserved(
        st.reserve_spend(&spend_request("S-2", &dead.owner, "d1", 400, 1000, 1000))
            .await
            .unwrap(),
    );
    // The holder dies: its lease expires, the next holder reconciles.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = lease(&b, "S-2", "w2", 5000).await.unwrap();
    assert_eq!(st.reconcile_spend("S-2", &next.owner).await.unwrap(), 1);
    assert_eq!(st.reconcile_spend("S-2", &next.owner).await.unwrap(), 0);
    assert_eq!(st.task_spend("S-2").await.unwrap().held, 0);
    assert_eq!(
        st.tenant_spend("acme", "2026-01-01").await.unwrap(),
        TenantSpend { spent: 0, held: 0 }
    );
    // An unsettled tenant hold also expires by itself.
    let mut req = spend_request("S-2", &next.owner, "d2", 400, 0, 1000);
    req.hold_ttl = Duration::from_millis(200);
    reserved(st.reserve_spend(&req).await.unwrap());
    assert_eq!(
        st.tenant_spend("acme", "2026-01-01").await.unwrap().held,
        400
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(st.tenant_spend("acme", "2026-01-01").await.unwrap().held, 0);
}

pub async fn a_claim_takes_the_lease_and_reads_the_state_under_it(b: Backend) {
    let st = &b.store;
    let ttl = Duration::from_secs(5);
    // Unknown task: the lease is taken (the caller releases it), there is no state.
    let none = st.claim("K-0", "w0", ttl).await.unwrap().unwrap();
    assert!(none.state.is_none());
    st.release_lease(&none.lease).await.unwrap();

    created(&b, "K-1").await;
    let first = st.claim("K-1", "w1", ttl).await.unwrap().unwrap();
    let s = first
        .state
        .clone()
        .expect("the state is read under the lease");
    assert_eq!((s.task_id.as_str(), s.version), ("K-1", 1));
    assert_eq!(s.task.unwrap().description, "conformance");
    assert_eq!(first.lease.owner, "w1");
    // Held by w1: another claim gets nothing and changes nothing.
    assert!(st.claim("K-1", "w2", ttl).await.unwrap().is_none());
    // w1 reserves and dies holding the reservation: the next claim says so.
    reserved(
        st.reserve_spend(&spend_request("K-1", &first.lease.owner, "r1", 100, 0, 0))
            .await
            .unwrap(),
    );
    st.release_lease(&first.lease).await.unwrap();
    let second = st.claim("K-1", "w2", ttl).await.unwrap().unwrap();
    assert!(second.lease.fencing_token > first.lease.fencing_token);
    assert!(second.open_reservations, "w1's reservation is still open");
    assert_eq!(
        st.reconcile_spend("K-1", &second.lease.owner)
            .await
            .unwrap(),
        1
    );
    st.release_lease(&second.lease).await.unwrap();
    // A store that can tell says "nothing open" once they are reconciled (the in-memory
    // store always answers "maybe", which only costs a reconcile call).
    let third = st.claim("K-1", "w3", ttl).await.unwrap().unwrap();
    if st.kind() == "redis" {
        assert!(!third.open_reservations);
    }
}

pub async fn a_finishing_checkpoint_settles_unreserved_spend_and_releases_the_lease(b: Backend) {
    let mut s = created(&b, "F-1").await;
    let l = lease(&b, "F-1", "w1", 60_000).await.unwrap();
    s.task = None;
    s.iteration_count = 1;
    let v = b
        .store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 1,
            lease: &l,
            iteration: Some(&record(1)),
            events: &[],
            archive_ttl: None,
            unreserved_spend: UnreservedSpend {
                total: 700,
                largest: 400,
            },
            index: None,
        })
        .await
        .unwrap()
        .version;
    assert_eq!(
        b.store.task_spend("F-1").await.unwrap(),
        TaskSpend {
            spent: 700,
            held: 0,
            max_call: 400
        }
    );
    // Still held: nobody else can take it.
    assert!(lease(&b, "F-1", "w2", 5_000).await.is_none());
    s.status = TaskStatus::Completed as i32;
    b.store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: v,
            lease: &l,
            iteration: None,
            events: &[],
            archive_ttl: Some(Duration::from_secs(60)),
            unreserved_spend: UnreservedSpend {
                total: 50,
                largest: 50,
            },
            index: None,
        })
        .await
        .unwrap();
    assert_eq!(b.store.task_spend("F-1").await.unwrap().spent, 750);
    assert_eq!(b.store.task_spend("F-1").await.unwrap().max_call, 400);
    // The archiving write released the lease: another worker takes it at once.
    assert!(lease(&b, "F-1", "w2", 5_000).await.is_some());
    let done = b.store.load("F-1").await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed as i32);
}

pub async fn approval_deadlines_come_due_in_order(b: Backend) {
    let st = &b.store;
    st.set_approval_deadline("G-2", 2_000).await.unwrap();
    st.set_approval_deadline("G-1", 1_000).await.unwrap();
    st.set_approval_deadline("G-3", 9_000).await.unwrap();
    assert_eq!(
        st.due_approvals(500, 10).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(st.due_approvals(5_000, 10).await.unwrap(), ["G-1", "G-2"]);
    assert_eq!(st.due_approvals(5_000, 1).await.unwrap(), ["G-1"]);
    st.clear_approval_deadline("G-1").await.unwrap();
    assert_eq!(st.due_approvals(10_000, 10).await.unwrap(), ["G-2", "G-3"]);
}

pub async fn a_task_is_queued_once_and_requeue_replaces_its_entry(b: Backend) {
    let q = &b.queue;
    q.ensure_group().await.unwrap();
    let first = q.enqueue("R-1", "tp", b"state").await.unwrap();
    assert_eq!(q.enqueue("R-1", "tp", b"state").await.unwrap(), first);
    assert_eq!(q.depth().await.unwrap().length, 1, "queued twice");
    let d = q.read_new(0, "a", 5, None).await.unwrap().remove(0);
    assert_eq!(d.initial_state, b"state");
    assert_eq!(
        q.enqueue("R-1", "tp", b"state").await.unwrap(),
        first,
        "pending"
    );
    q.requeue(&d).await.unwrap();
    let again = q
        .read_new(0, "b", 5, Some(Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].entry_id, first);
    assert_eq!(again[0].initial_state, b"state", "the state rides along");
    assert_eq!(q.depth().await.unwrap().length, 1);
    // Pending and fresh: reclaimable after min_idle, not before.
    let wait = q
        .next_reclaim(0, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("an entry is pending");
    assert!(wait > Duration::from_secs(4), "{wait:?}");
    q.ack(&again[0]).await.unwrap();
    assert_eq!(
        q.next_reclaim(0, Duration::from_secs(5)).await.unwrap(),
        None
    );
    // Acknowledged: the id can be queued again.
    assert_ne!(q.enqueue("R-1", "", b"").await.unwrap(), first);
}

pub async fn redis_backend() -> Backend {
    let redis = test_support::RedisServer::start();
    let conn = redis.connection_manager().await;
    Backend {
        store: Arc::new(executor_service::session::RedisStore::new(
            conn.clone(),
            "conf",
        )),
        queue: Arc::new(executor_service::queue::RedisQueue::new(conn, "conf")),
        _guard: Box::new(redis),
    }
}

pub async fn memory_backend() -> Backend {
    Backend {
        store: Arc::new(executor_service::session::MemoryStore::new()),
        queue: Arc::new(executor_service::queue::MemoryQueue::new()),
        _guard: Box::new(()),
    }
}

macro_rules! conformance_suite {
    ($module:ident, $backend:path) => {
        mod $module {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        super::$name($backend().await).await
                    }
                };
            }
            case!(create_is_idempotent);
            case!(the_task_is_stored_once_and_survives_checkpoints_without_it);
            case!(a_stale_version_is_rejected);
            case!(a_worker_that_lost_its_lease_cannot_write);
            case!(leases_renew_and_release_only_for_their_owner);
            case!(the_iteration_log_appends_and_reads_recent_first_to_last);
            case!(events_are_sequenced_and_readable_after_a_cursor);
            case!(a_cancel_request_is_reported_by_the_next_checkpoint);
            case!(archiving_expires_the_task_after_its_ttl);
            case!(queue_delivers_each_entry_once_and_reclaims_idle_ones);
            case!(list_pages_in_update_order_with_exact_counts);
            case!(list_filters_combine);
            case!(list_by_status_and_tenant_pages_counts_and_follows_changes);
            case!(archived_tasks_leave_the_list_when_they_expire);
            case!(the_iteration_log_reads_whole_in_pages);
            case!(rebuilding_the_indexes_keeps_the_listing);
            case!(spend_is_reserved_against_task_and_tenant_and_settled);
            case!(a_dead_holders_reservations_are_released_by_the_next_lease);
            case!(approval_deadlines_come_due_in_order);
            case!(a_task_is_queued_once_and_requeue_replaces_its_entry);
            case!(a_claim_takes_the_lease_and_reads_the_state_under_it);
            case!(a_finishing_checkpoint_settles_unreserved_spend_and_releases_the_lease);
        }
    };
}

conformance_suite!(redis, super::redis_backend);
conformance_suite!(memory, super::memory_backend);

/// A connection of its own to the Redis backend's server, to look at its keys.
async fn redis_conn(b: &Backend) -> ::redis::aio::ConnectionManager {
    b._guard
        .downcast_ref::<test_support::RedisServer>()
        .expect("redis backend")
        .connection_manager()
        .await
}

/// Expired tasks leave the Redis index without a `List`: the next write that archives a
/// task prunes them (every expiry comes from such a write, so pruning keeps pace).
#[tokio::test]
async fn redis_an_archiving_write_prunes_expired_entries_from_the_index() {
    let b = redis_backend().await;
    let archive = |id: &'static str| completed_and_archived(&b, id, Duration::from_millis(300));
    let mut conn = redis_conn(&b).await;
    let probe = conn.clone();
    let indexed = |id: &'static str| {
        let mut conn = probe.clone();
        async move {
            let entry: bool = ::redis::cmd("HEXISTS")
                .arg("conf:{index}:entry")
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
            let all: Option<f64> = ::redis::cmd("ZSCORE")
                .arg("conf:{index}:all")
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
            entry || all.is_some()
        }
    };
    archive("E-1").await;
    assert!(indexed("E-1").await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A running task's write, then the next archiving write, which removes the expired
    // entry from every set.
    let s = created(&b, "E-2").await;
    let l = lease(&b, "E-2", "w", 5_000).await.unwrap();
    write(&b, &s, 1, &l).await.unwrap();
    archive("E-3").await;
    assert!(!indexed("E-1").await);
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("conf:{index}:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys
        .iter()
        .filter(|k| k.contains(":st:") || k.ends_with(":expiry"))
    {
        let score: Option<f64> = ::redis::cmd("ZSCORE")
            .arg(key)
            .arg("E-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(score, None, "E-1 still in {key}");
    }
    assert!(indexed("E-2").await && indexed("E-3").await);
}

/// The Redis index survives losing its keys: the rebuild restores it from the tasks.
#[tokio::test]
async fn redis_rebuild_restores_a_lost_index() {
    let b = redis_backend().await;
    stored_as(
        &b,
        "D-1",
        TaskStatus::InProgress,
        1_700_000_001_000,
        "acme",
        true,
    )
    .await;
    let mut conn = redis_conn(&b).await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("conf:{index}:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.ends_with(":all")), "{keys:?}");
    let _: i64 = ::redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let lost = b
        .store
        .list(&query(TaskFilter::default(), 10, None))
        .await
        .unwrap();
    assert!(lost.tasks.is_empty());
    assert_eq!(b.store.rebuild_indexes().await.unwrap(), 1);
    let back = b
        .store
        .list(&query(
            TaskFilter {
                tenant: Some("acme".into()),
                statuses: vec![TaskStatus::InProgress],
                ..Default::default()
            },
            10,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&back), ["D-1"]);
}

/// An index written before the status x tenant sets existed lists exactly (by walking the
/// tenant set) until `--rebuild-indexes` fills them; the sets follow every change and
/// expiry.
#[tokio::test]
async fn redis_status_tenant_sets_are_exact_before_and_after_the_rebuild() {
    use TaskStatus::*;
    let b = redis_backend().await;
    let conn = redis_conn(&b).await;
    const T: i64 = 1_700_000_000_000;
    stored_as(&b, "U-1", InProgress, T + 1_000, "acme", true).await;
    stored_as(&b, "U-2", InProgress, T + 2_000, "acme", false).await;
    stored_as(&b, "U-3", Pending, T + 3_000, "acme", false).await;
    stored_as(&b, "U-4", InProgress, T + 4_000, "globex", false).await;
    let members = |key: &'static str| {
        let mut conn = conn.clone();
        async move {
            let m: Vec<String> = ::redis::cmd("ZRANGE")
                .arg(format!("conf:{{index}}:{key}"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            m
        }
    };
    let ready = || {
        let mut conn = conn.clone();
        async move {
            let n: i64 = ::redis::cmd("EXISTS")
                .arg("conf:{index}:st-tenant-ready")
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    };
    assert!(
        ready().await,
        "a new index is complete from its first write"
    );
    assert_eq!(
        members("st:TASK_STATUS_IN_PROGRESS:tenant:acme").await,
        ["U-1", "U-2"]
    );
    assert_eq!(members("st:TASK_STATUS_PENDING:tenant:acme").await, ["U-3"]);
    assert_eq!(
        members("st:TASK_STATUS_IN_PROGRESS:tenant:globex").await,
        ["U-4"]
    );

    let running = TaskFilter {
        statuses: vec![InProgress, Pending],
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let list = |f: TaskFilter| {
        let store = b.store.clone();
        async move { store.list(&query(f, 2, None)).await.unwrap() }
    };
    let expected = list(running.clone()).await;
    assert_eq!(ids(&expected), ["U-3", "U-2"]);
    assert_eq!(expected.counts, vec![(Pending, 1), (InProgress, 2)]);

    // An index from before: no marker, no status x tenant sets. A later write fills in
    // only its own task, so the sets are partial and must not be read.
    let mut c = conn.clone();
    let old: Vec<String> = ::redis::cmd("KEYS")
        .arg("conf:{index}:st*tenant*")
        .query_async(&mut c)
        .await
        .unwrap();
    // Three status x tenant sets and the marker.
    assert_eq!(old.len(), 4, "{old:?}");
    assert!(
        old.iter().any(|k| k.ends_with("st-tenant-ready")),
        "{old:?}"
    );
    let _: i64 = ::redis::cmd("DEL")
        .arg(&old)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(list(running.clone()).await, expected);
    let lease = Lease {
        task_id: "U-1".into(),
        owner: "w".into(),
        fencing_token: 1,
        ttl: Duration::from_secs(5),
    };
    let mut s = b.store.load("U-1").await.unwrap().unwrap();
    s.status = Pending as i32;
    s.updated_at = at_ms(T + 5_000);
    write(&b, &s, 2, &lease).await.unwrap();
    assert!(!ready().await);
    assert_eq!(members("st:TASK_STATUS_PENDING:tenant:acme").await, ["U-1"]);
    let partial = list(running.clone()).await;
    assert_eq!(ids(&partial), ["U-1", "U-3"]);
    assert_eq!(partial.counts, vec![(Pending, 2), (InProgress, 1)]);

    assert_eq!(b.store.rebuild_indexes().await.unwrap(), 4);
    assert!(ready().await);
    assert_eq!(
        members("st:TASK_STATUS_PENDING:tenant:acme").await,
        ["U-3", "U-1"]
    );
    assert_eq!(
        members("st:TASK_STATUS_IN_PROGRESS:tenant:acme").await,
        ["U-2"]
    );
    assert_eq!(list(running.clone()).await, partial);

    // A status change moves the task between the sets; an expiry removes it.
    let mut s = b.store.load("U-1").await.unwrap().unwrap();
    s.status = Completed as i32;
    s.updated_at = at_ms(T + 6_000);
    b.store
        .checkpoint(Checkpoint {
            state: &s,
            expected_version: 3,
            lease: &lease,
            iteration: None,
            events: &[],
            archive_ttl: Some(Duration::from_millis(300)),
            unreserved_spend: Default::default(),
            index: None,
        })
        .await
        .unwrap();
    assert_eq!(members("st:TASK_STATUS_PENDING:tenant:acme").await, ["U-3"]);
    assert_eq!(
        members("st:TASK_STATUS_COMPLETED:tenant:acme").await,
        ["U-1"]
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let done = list(TaskFilter {
        statuses: vec![Completed],
        ..running.clone()
    })
    .await;
    assert!(done.tasks.is_empty(), "{done:?}");
    assert_eq!(done.counts, vec![(Completed, 0)]);
    assert!(
        members("st:TASK_STATUS_COMPLETED:tenant:acme")
            .await
            .is_empty()
    );
}

/// Every index set holding `id` with its score, and the stored entry JSON.
async fn index_of(
    conn: &::redis::aio::ConnectionManager,
    id: &str,
) -> (Vec<(String, i64)>, String) {
    let mut conn = conn.clone();
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("conf:{index}:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let mut sets = Vec::new();
    for key in keys
        .iter()
        .filter(|k| !k.ends_with(":entry") && !k.ends_with("-ready"))
    {
        let score: Option<i64> = ::redis::cmd("ZSCORE")
            .arg(key)
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(s) = score {
            sets.push((key.trim_start_matches("conf:{index}:").to_string(), s));
        }
    }
    let entry: Option<String> = ::redis::cmd("HGET")
        .arg("conf:{index}:entry")
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
    (sets, entry.unwrap_or_default())
}

/// A checkpoint that names the entry it replaces updates the index directly (no
/// decoding in the script), and lands in exactly the sets the general path does, through
/// status, path, reason, policy and tenant changes; a stale `before` is not trusted.
#[tokio::test]
async fn redis_a_direct_index_update_lands_where_the_general_one_does() {
    use TaskStatus::*;
    use executor_service::session::{IndexChange, IndexEntry};
    let b = redis_backend().await;
    let conn = redis_conn(&b).await;
    const T: i64 = 1_700_000_000_000;
    let steps: [(TaskStatus, ExecutionPath, &[ReasonCode], &str); 5] = [
        (
            InProgress,
            ExecutionPath::SingleAgent,
            &[ReasonCode::SimpleTask],
            "p1",
        ),
        (
            InProgress,
            ExecutionPath::SingleAgent,
            &[ReasonCode::SimpleTask],
            "p1",
        ),
        (
            WaitingApproval,
            ExecutionPath::MultiAgent,
            &[ReasonCode::HighComplexity, ReasonCode::CrossRepo],
            "p2",
        ),
        (
            InProgress,
            ExecutionPath::MultiAgent,
            &[ReasonCode::CrossRepo],
            "p2",
        ),
        (Failed, ExecutionPath::Unspecified, &[], ""),
    ];
    // D-1 names its entries (the direct path), G-1 does not (the general path).
    let mut tasks = Vec::new();
    for id in ["D-1", "G-1"] {
        let mut s = state(id);
        if let Some(t) = s.task.as_mut() {
            t.labels.insert("tenant".into(), "acme".into());
        }
        s.created_at = at_ms(T);
        let CreateOutcome::Created(s) = b.store.create(&s, &submitted(id)).await.unwrap() else {
            panic!("{id} existed");
        };
        let l = lease(&b, id, "w", 5_000).await.unwrap();
        tasks.push((s, l));
    }
    let mut before = IndexEntry::of(&tasks[0].0);
    for (i, (status, path, reasons, policy)) in steps.iter().enumerate() {
        let version = i as u64 + 1;
        for (n, (s, l)) in tasks.iter_mut().enumerate() {
            s.task = None;
            s.status = *status as i32;
            s.path = *path as i32;
            s.updated_at = at_ms(T + 1_000 * version as i64);
            s.analysis = Some(RoutingAnalysis {
                reasons: reasons
                    .iter()
                    .map(|r| RoutingReason {
                        code: *r as i32,
                        message: "m".into(),
                    })
                    .collect(),
                policy_version: policy.to_string(),
                ..Default::default()
            });
            let after = IndexEntry {
                v: version + 1,
                t: Some("acme".into()),
                ..IndexEntry::of(s)
            };
            let index = (n == 0).then_some(IndexChange {
                before: &before,
                after: &after,
            });
            b.store
                .checkpoint(Checkpoint {
                    state: s,
                    expected_version: version,
                    lease: l,
                    iteration: None,
                    events: &[],
                    archive_ttl: None,
                    unreserved_spend: Default::default(),
                    index,
                })
                .await
                .unwrap();
            if n == 0 {
                let (_, stored) = index_of(&conn, "D-1").await;
                assert_eq!(
                    stored,
                    after.to_json(),
                    "step {i}: stored as the writer sent it"
                );
                before = after;
            }
        }
        let (direct, _) = index_of(&conn, "D-1").await;
        let (general, _) = index_of(&conn, "G-1").await;
        assert_eq!(direct, general, "step {i}");
        let status_key = format!("st:{}", status.as_str_name());
        assert!(
            direct.iter().any(|(k, _)| *k == status_key),
            "step {i}: {direct:?}"
        );
        assert!(
            direct
                .iter()
                .all(|(_, score)| *score == T + 1_000 * version as i64),
            "step {i}: every set carries the update time: {direct:?}"
        );
    }
    // A writer whose `before` is stale (it says PENDING; IN_PROGRESS... was indexed since)
    // is not trusted: the general path removes the memberships actually stored.
    let (s, l) = &mut tasks[0];
    let stale = IndexEntry {
        s: Pending.as_str_name().to_string(),
        ..before.clone()
    };
    s.status = Completed as i32;
    let after = IndexEntry {
        v: 7,
        ..IndexEntry::of(s)
    };
    let after = IndexEntry {
        t: Some("acme".into()),
        ..after
    };
    b.store
        .checkpoint(Checkpoint {
            state: s,
            expected_version: 6,
            lease: l,
            iteration: None,
            events: &[],
            archive_ttl: None,
            unreserved_spend: Default::default(),
            index: Some(IndexChange {
                before: &stale,
                after: &after,
            }),
        })
        .await
        .unwrap();
    let (sets, _) = index_of(&conn, "D-1").await;
    let names: Vec<&str> = sets.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "all",
            "st:TASK_STATUS_COMPLETED",
            "st:TASK_STATUS_COMPLETED:tenant:acme",
            "tenant:acme"
        ]
    );
}
