//! One conformance suite for every [`SessionStore`] and [`WorkQueue`] implementation:
//! the same behaviour is required of Redis and of the in-memory store used by the demo.

use executor_service::Error;
use executor_service::queue::WorkQueue;
use executor_service::session::Lease;
use executor_service::session::governance::{
    Refusal, Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantHold, TenantSpend,
};
use executor_service::session::{Checkpoint, CreateOutcome, SessionStore};
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{
    Finished, IterationRecord, ProgressEvent, SessionState, Submitted, Task, TaskStatus,
    progress_event,
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
            case!(spend_is_reserved_against_task_and_tenant_and_settled);
            case!(a_dead_holders_reservations_are_released_by_the_next_lease);
            case!(approval_deadlines_come_due_in_order);
            case!(a_task_is_queued_once_and_requeue_replaces_its_entry);
        }
    };
}

conformance_suite!(redis, super::redis_backend);
conformance_suite!(memory, super::memory_backend);
