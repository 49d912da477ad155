//! The behaviour every [`Store`] must have, as one suite of tests generic over the backend.
//!
//! Each case is an `async fn` taking a [`Fixture`] (a fresh, empty database of one backend);
//! [`store_contract!`] makes each a named `#[tokio::test]` in a backend's test module:
//!
//! ```ignore
//! crate::contract::store_contract!(SqliteFixture::new().await);
//! ```
//!
//! A case that opens the fixture twice plays two nodes sharing one database (or a restart, when
//! the first store is dropped before the second opens).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{
    Admission, CallbackOutbox, Claimed, Lease, Models, NewTask, QueueStats, Store, StoreError,
    Task, TaskStatus, TaskStore, WorkerRegistry, now_ms,
};

/// One backend's database, fresh for each case. Not `Send`: opening a store need not be (sqlx's
/// futures trip rustc's proof of it), so cases open stores on the test's own task.
#[async_trait(?Send)]
pub(crate) trait Fixture: 'static {
    type Store: Store;

    /// Opens a store on the fixture's database; several may be open at once.
    async fn open(&self) -> Self::Store;

    /// How many task inputs the backend still holds.
    async fn input_count(&self) -> u64;
}

/// Makes every case of the suite a `#[tokio::test]` of the calling module, each on a fixture
/// made by `$fixture` (an expression, awaited inside the test).
macro_rules! store_contract {
    ($fixture:expr) => {
        $crate::contract::store_contract!(@cases $fixture;
            create_then_find_by_id_and_external_id,
            another_account_cannot_see_a_task,
            external_id_is_unique_per_account_only,
            list_is_newest_first_with_paging,
            queue_full_counts_waiting_tasks_of_all_accounts,
            account_busy_counts_the_accounts_unfinished_tasks,
            admission_limits_hold_across_nodes,
            a_refused_create_leaves_no_input_behind,
            concurrent_creates_all_succeed,
            claim_takes_the_oldest_first,
            claim_takes_only_tasks_for_served_models,
            concurrent_claims_across_nodes_hand_each_task_out_once,
            expired_lease_is_claimed_again_and_the_old_lease_is_lost,
            heartbeat_keeps_the_lease_and_records_progress_only,
            a_task_claimed_max_attempts_times_ends_failed_with_a_reason,
            succeed_records_the_result_and_drops_the_input,
            fail_records_the_reason_and_drops_the_input,
            release_without_counting_the_attempt,
            released_task_waits_for_its_delay_and_keeps_the_attempt,
            wait_for_work_returns_at_once_when_a_task_is_claimable,
            wait_for_work_wakes_on_create_and_on_lease_expiry,
            wait_for_work_ignores_tasks_for_other_models,
            deliveries_are_written_only_with_a_callback_url,
            deliveries_retry_deliver_and_abandon,
            a_claimed_delivery_is_out_until_its_lease_runs_out,
            one_delivery_per_task_is_out_at_a_time,
            wait_for_deliveries_wakes_on_a_status_change,
            unserved_counts_queued_tasks_no_live_worker_serves,
            purge_finished_returns_ids_and_keeps_unfinished_tasks,
            reopening_keeps_everything,
            several_nodes_open_a_new_database_at_once,
        );
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::contract::$case($fixture).await;
            }
        )*
    };
}
pub(crate) use store_contract;

const LOOSE: Admission = Admission {
    max_queued: 1000,
    max_unfinished_per_account: 1000,
};
const LEASE: Duration = Duration::from_secs(60);
/// Long enough to outlast a short lease after a sleep of `SHORT_WAIT`.
const SHORT_LEASE: Duration = Duration::from_millis(100);
const SHORT_WAIT: Duration = Duration::from_millis(150);
/// What a wait that should be woken is given: far more than any case takes.
const LONG_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a case waits for a wake-up before calling it lost.
const WAKE_DEADLINE: Duration = Duration::from_secs(10);
const MODEL: &str = "infill";

fn new_task(id: &str, account: &str) -> NewTask {
    NewTask {
        id: id.to_owned(),
        account: account.to_owned(),
        external_task_id: None,
        callback_url: None,
        model: MODEL.to_owned(),
        spec: format!("{{\"task\":\"{id}\"}}"),
        input: id.as_bytes().to_vec(),
    }
}

fn with_callback(id: &str, account: &str) -> NewTask {
    NewTask {
        callback_url: Some(format!("https://hooks.example/{id}")),
        ..new_task(id, account)
    }
}

fn for_model(id: &str, model: &str) -> NewTask {
    NewTask {
        model: model.to_owned(),
        ..new_task(id, "acme")
    }
}

fn only(models: &[&str]) -> Models {
    Models::Only(models.iter().map(|m| m.to_string()).collect())
}

async fn create(store: &impl TaskStore, task: NewTask) -> Task {
    store.create(task, LOOSE).await.unwrap()
}

async fn claim(store: &impl TaskStore) -> Claimed {
    store
        .claim(&Models::Any, LEASE, 3)
        .await
        .unwrap()
        .expect("a claimable task")
}

async fn try_claim(store: &impl TaskStore, lease_for: Duration) -> Option<Claimed> {
    store.claim(&Models::Any, lease_for, 3).await.unwrap()
}

async fn status(store: &impl TaskStore, id: &str) -> Task {
    store.find("acme", id).await.unwrap().expect("task exists")
}

fn is_lease_lost<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::LeaseLost { .. }))
}

/// Bodies of every pending delivery, claimed and marked delivered: in rounds of one per task,
/// oldest first within a round.
async fn drain_bodies(store: &impl CallbackOutbox) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let batch = store.claim_deliveries(LEASE, 100).await.unwrap();
        if batch.is_empty() {
            return bodies;
        }
        for delivery in batch {
            store.delivered(&delivery.id).await.unwrap();
            bodies.push(delivery.body);
        }
    }
}

pub(crate) async fn create_then_find_by_id_and_external_id(f: impl Fixture) {
    let store = f.open().await;
    let before = now_ms();
    let created = create(
        &store,
        NewTask {
            external_task_id: Some("mine-1".into()),
            ..for_model("t1", "sdxl-inpaint")
        },
    )
    .await;
    assert_eq!(created.status, TaskStatus::Submitted);
    assert_eq!(created.attempts, 0);
    assert_eq!(created.model, "sdxl-inpaint");
    assert_eq!(created.spec, "{\"task\":\"t1\"}");
    assert!(created.created_at >= before - 1_000, "{created:?}");
    assert_eq!(created.created_at, created.updated_at);

    assert_eq!(
        store.find("acme", "t1").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.find("acme", "mine-1").await.unwrap(), Some(created));
    assert_eq!(store.find("acme", "nope").await.unwrap(), None);
}

pub(crate) async fn another_account_cannot_see_a_task(f: impl Fixture) {
    let store = f.open().await;
    let task = NewTask {
        external_task_id: Some("mine-1".into()),
        ..new_task("t1", "acme")
    };
    create(&store, task).await;
    assert_eq!(store.find("other", "t1").await.unwrap(), None);
    assert_eq!(store.find("other", "mine-1").await.unwrap(), None);
    assert!(store.list("other", 1, 30).await.unwrap().is_empty());
}

pub(crate) async fn external_id_is_unique_per_account_only(f: impl Fixture) {
    let store = f.open().await;
    let with_external = |id: &str, account: &str| NewTask {
        external_task_id: Some("same".into()),
        ..new_task(id, account)
    };
    create(&store, with_external("t1", "acme")).await;
    let err = store
        .create(with_external("t2", "acme"), LOOSE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ExternalIdTaken(ref id) if id == "same"));
    create(&store, with_external("t3", "other")).await;
    assert_eq!(store.find("acme", "t2").await.unwrap(), None);
    assert_eq!(store.find("other", "same").await.unwrap().unwrap().id, "t3");
    assert_eq!(f.input_count().await, 2, "the refused task's input is gone");
}

pub(crate) async fn list_is_newest_first_with_paging(f: impl Fixture) {
    let store = f.open().await;
    for i in 0..5 {
        create(&store, new_task(&format!("t{i}"), "acme")).await;
    }
    create(&store, new_task("x", "other")).await;
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list("acme", 1, 2).await.unwrap()), ["t4", "t3"]);
    assert_eq!(ids(store.list("acme", 2, 2).await.unwrap()), ["t2", "t1"]);
    assert_eq!(ids(store.list("acme", 3, 2).await.unwrap()), ["t0"]);
    assert!(store.list("acme", 4, 2).await.unwrap().is_empty());
    assert_eq!(store.list("acme", 1, 30).await.unwrap().len(), 5);
}

pub(crate) async fn queue_full_counts_waiting_tasks_of_all_accounts(f: impl Fixture) {
    let store = f.open().await;
    let admission = Admission {
        max_queued: 2,
        max_unfinished_per_account: 10,
    };
    store
        .create(new_task("t1", "acme"), admission)
        .await
        .unwrap();
    store
        .create(new_task("t2", "other"), admission)
        .await
        .unwrap();
    let err = store.create(new_task("t3", "third"), admission).await;
    assert!(matches!(err, Err(StoreError::QueueFull { max: 2 })));
    assert_eq!(store.find("third", "t3").await.unwrap(), None);

    // A task taken by a worker no longer waits.
    claim(&store).await;
    store
        .create(new_task("t3", "third"), admission)
        .await
        .unwrap();
}

pub(crate) async fn account_busy_counts_the_accounts_unfinished_tasks(f: impl Fixture) {
    let store = f.open().await;
    let admission = Admission {
        max_queued: 100,
        max_unfinished_per_account: 2,
    };
    for id in ["t1", "t2"] {
        store.create(new_task(id, "acme"), admission).await.unwrap();
    }
    let err = store.create(new_task("t3", "acme"), admission).await;
    assert!(matches!(err, Err(StoreError::AccountBusy { max: 2 })));
    store
        .create(new_task("o1", "other"), admission)
        .await
        .unwrap();

    // Processing still counts; finished does not.
    let claimed = claim(&store).await;
    let err = store.create(new_task("t3", "acme"), admission).await;
    assert!(matches!(err, Err(StoreError::AccountBusy { .. })));
    store.succeed(&claimed.lease, "{}".into()).await.unwrap();
    store
        .create(new_task("t3", "acme"), admission)
        .await
        .unwrap();
}

/// Two nodes race 40 creates against limits of 10: exactly 10 are admitted, whatever the
/// interleaving.
pub(crate) async fn admission_limits_hold_across_nodes(f: impl Fixture) {
    let nodes = [Arc::new(f.open().await), Arc::new(f.open().await)];
    let race = |admission: Admission, account: fn(usize) -> String, prefix: &'static str| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let node = Arc::clone(&nodes[i % 2]);
                tokio::spawn(async move {
                    node.create(new_task(&format!("{prefix}{i}"), &account(i)), admission)
                        .await
                })
            })
            .collect();
        async move {
            let mut admitted = 0;
            for handle in handles {
                match handle.await.unwrap() {
                    Ok(_) => admitted += 1,
                    Err(StoreError::QueueFull { .. } | StoreError::AccountBusy { .. }) => {}
                    Err(err) => panic!("unexpected error: {err}"),
                }
            }
            admitted
        }
    };
    let queue_limit = Admission {
        max_queued: 10,
        max_unfinished_per_account: 1000,
    };
    assert_eq!(race(queue_limit, |i| format!("a{i}"), "q").await, 10);
    assert_eq!(nodes[0].stats().await.unwrap().submitted, 10);

    let account_limit = Admission {
        max_queued: 1000,
        max_unfinished_per_account: 10,
    };
    assert_eq!(race(account_limit, |_| "busy".into(), "b").await, 10);
    assert_eq!(nodes[1].list("busy", 1, 100).await.unwrap().len(), 10);
}

pub(crate) async fn a_refused_create_leaves_no_input_behind(f: impl Fixture) {
    let store = f.open().await;
    let admission = Admission {
        max_queued: 1,
        max_unfinished_per_account: 10,
    };
    store
        .create(new_task("a", "acme"), admission)
        .await
        .unwrap();
    let refused = store.create(new_task("b", "acme"), admission).await;
    assert!(matches!(refused, Err(StoreError::QueueFull { max: 1 })));
    assert_eq!(f.input_count().await, 1);
}

pub(crate) async fn concurrent_creates_all_succeed(f: impl Fixture) {
    let store = Arc::new(f.open().await);
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let task = NewTask {
                    input: vec![i as u8; 300 * 1024],
                    external_task_id: Some(format!("ext-{i}")),
                    ..new_task(&format!("t{i}"), &format!("account-{}", i % 4))
                };
                store.create(task, LOOSE).await
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(store.stats().await.unwrap().submitted, 64);
    assert_eq!(store.list("account-1", 1, 100).await.unwrap().len(), 16);
    let claimed = claim(&*store).await;
    assert_eq!(claimed.input.len(), 300 * 1024);
}

pub(crate) async fn claim_takes_the_oldest_first(f: impl Fixture) {
    let store = f.open().await;
    for id in ["a", "b", "c"] {
        create(&store, new_task(id, "acme")).await;
    }
    let first = claim(&store).await;
    assert_eq!(first.task.id, "a");
    assert_eq!(first.task.status, TaskStatus::Processing);
    assert_eq!(first.task.attempts, 1);
    assert_eq!(first.input, b"a");
    assert_eq!(first.lease.task_id, "a");
    assert_eq!(claim(&store).await.task.id, "b");
    assert_eq!(claim(&store).await.task.id, "c");
    assert!(try_claim(&store, LEASE).await.is_none());
    assert_eq!(
        store.stats().await.unwrap(),
        QueueStats {
            processing: 3,
            ..QueueStats::default()
        }
    );
}

pub(crate) async fn claim_takes_only_tasks_for_served_models(f: impl Fixture) {
    let store = f.open().await;
    create(&store, for_model("old-sdxl", "sdxl")).await;
    create(&store, for_model("sd15", "sd15")).await;
    create(&store, for_model("sdxl", "sdxl")).await;
    let claim_for = |models: Models| {
        let store = &store;
        async move {
            let claimed = store.claim(&models, LEASE, 3).await.unwrap();
            claimed.map(|c| c.task.id)
        }
    };
    assert_eq!(claim_for(only(&["other"])).await, None);
    assert_eq!(claim_for(only(&[])).await, None);
    assert_eq!(claim_for(only(&["sd15"])).await.as_deref(), Some("sd15"));
    assert_eq!(claim_for(only(&["sd15"])).await, None);
    assert_eq!(
        claim_for(only(&["sd15", "sdxl"])).await.as_deref(),
        Some("old-sdxl")
    );
    assert_eq!(claim_for(Models::Any).await.as_deref(), Some("sdxl"));
    assert_eq!(claim_for(Models::Any).await, None);
}

/// Two nodes with three workers each drain 30 tasks: every task is handed out exactly once.
pub(crate) async fn concurrent_claims_across_nodes_hand_each_task_out_once(f: impl Fixture) {
    let nodes = [Arc::new(f.open().await), Arc::new(f.open().await)];
    for i in 0..30 {
        create(&*nodes[0], new_task(&format!("t{i:02}"), "acme")).await;
    }
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let node = Arc::clone(&nodes[w % 2]);
            tokio::spawn(async move {
                let mut taken = Vec::new();
                while let Some(claimed) = try_claim(&*node, LEASE).await {
                    node.succeed(&claimed.lease, "{}".into()).await.unwrap();
                    taken.push(claimed.task.id);
                }
                taken
            })
        })
        .collect();
    let mut taken = Vec::new();
    for worker in workers {
        taken.extend(worker.await.unwrap());
    }
    taken.sort();
    let expected: Vec<_> = (0..30).map(|i| format!("t{i:02}")).collect();
    assert_eq!(taken, expected);
    assert_eq!(nodes[1].stats().await.unwrap().succeed, 30);
}

pub(crate) async fn expired_lease_is_claimed_again_and_the_old_lease_is_lost(f: impl Fixture) {
    let store = f.open().await;
    create(&store, new_task("t1", "acme")).await;
    let first = try_claim(&store, SHORT_LEASE).await.unwrap();
    // Still held: nothing to claim.
    assert!(try_claim(&store, LEASE).await.is_none());
    tokio::time::sleep(SHORT_WAIT).await;

    let second = claim(&store).await;
    assert_eq!(second.task.id, "t1");
    assert_eq!(second.task.attempts, 2);
    assert_ne!(second.lease.token, first.lease.token);
    assert_eq!(second.input, b"t1");

    let lost = store.heartbeat(&first.lease, LEASE, Some(0.5)).await;
    assert!(matches!(lost, Err(StoreError::LeaseLost { ref task_id }) if task_id == "t1"));
    assert!(is_lease_lost(
        store.succeed(&first.lease, "{}".into()).await
    ));
    assert!(is_lease_lost(store.fail(&first.lease, "x".into()).await));
    assert!(is_lease_lost(
        store.release(&first.lease, Duration::ZERO, true).await
    ));

    // The new holder is unaffected.
    store
        .heartbeat(&second.lease, LEASE, Some(0.25))
        .await
        .unwrap();
    assert_eq!(status(&store, "t1").await.progress, Some(0.25));
    store.succeed(&second.lease, "{}".into()).await.unwrap();
}

pub(crate) async fn heartbeat_keeps_the_lease_and_records_progress_only(f: impl Fixture) {
    let store = f.open().await;
    create(&store, new_task("t1", "acme")).await;
    let claimed = try_claim(&store, SHORT_LEASE).await.unwrap();
    let before = status(&store, "t1").await;
    store
        .heartbeat(&claimed.lease, LEASE, Some(0.5))
        .await
        .unwrap();
    tokio::time::sleep(SHORT_WAIT).await;
    // The lease was extended, so the task is not claimable although SHORT_LEASE ran out.
    assert!(try_claim(&store, LEASE).await.is_none());
    store.heartbeat(&claimed.lease, LEASE, None).await.unwrap();
    let after = status(&store, "t1").await;
    assert_eq!(after.progress, Some(0.5));
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(after.status, TaskStatus::Processing);

    let gone = Lease {
        task_id: "nope".into(),
        token: claimed.lease.token.clone(),
    };
    assert!(is_lease_lost(store.heartbeat(&gone, LEASE, None).await));
}

pub(crate) async fn a_task_claimed_max_attempts_times_ends_failed_with_a_reason(f: impl Fixture) {
    let store = f.open().await;
    create(&store, with_callback("doomed", "acme")).await;
    create(&store, new_task("next", "acme")).await;
    for attempt in 1..=2 {
        let claimed = store
            .claim(&Models::Any, SHORT_LEASE, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.task.id, "doomed");
        assert_eq!(claimed.task.attempts, attempt);
        tokio::time::sleep(SHORT_WAIT).await;
    }
    // The third claim gives "doomed" up and hands out the next task instead.
    let claimed = store.claim(&Models::Any, LEASE, 2).await.unwrap().unwrap();
    assert_eq!(claimed.task.id, "next");

    let doomed = status(&store, "doomed").await;
    assert_eq!(doomed.status, TaskStatus::Failed);
    assert_eq!(
        doomed.status_msg.as_deref(),
        Some("gave up after 2 attempts: the worker stopped before finishing each time")
    );
    assert_eq!(
        drain_bodies(&store).await,
        ["doomed:processing", "doomed:processing", "doomed:failed"]
    );
    assert_eq!(
        f.input_count().await,
        1,
        "only the claimed task keeps its input"
    );
}

pub(crate) async fn succeed_records_the_result_and_drops_the_input(f: impl Fixture) {
    let store = f.open().await;
    let created = create(&store, new_task("t1", "acme")).await;
    let claimed = claim(&store).await;
    let done = store
        .succeed(&claimed.lease, "{\"images\":[]}".into())
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeed);
    assert_eq!(done.result.as_deref(), Some("{\"images\":[]}"));
    assert_eq!(done.status_msg, None);
    assert_eq!(done.progress, Some(1.0));
    assert!(done.updated_at >= created.updated_at);
    assert_eq!(status(&store, "t1").await, done);
    assert_eq!(f.input_count().await, 0);
    // Finished: no second ending, not claimable.
    assert!(is_lease_lost(
        store.fail(&claimed.lease, "late".into()).await
    ));
    assert!(try_claim(&store, LEASE).await.is_none());
}

pub(crate) async fn fail_records_the_reason_and_drops_the_input(f: impl Fixture) {
    let store = f.open().await;
    create(&store, new_task("t1", "acme")).await;
    let claimed = claim(&store).await;
    let done = store
        .fail(&claimed.lease, "the image is too small".into())
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.status_msg.as_deref(), Some("the image is too small"));
    assert_eq!(done.result, None);
    assert_eq!(status(&store, "t1").await, done);
    assert_eq!(f.input_count().await, 0);
    assert_eq!(store.stats().await.unwrap().failed, 1);
}

pub(crate) async fn release_without_counting_the_attempt(f: impl Fixture) {
    let store = f.open().await;
    create(&store, with_callback("t1", "acme")).await;
    let claimed = claim(&store).await;
    store
        .release(&claimed.lease, Duration::ZERO, false)
        .await
        .unwrap();
    let released = status(&store, "t1").await;
    assert_eq!(released.status, TaskStatus::Submitted);
    assert_eq!(released.attempts, 0);
    assert!(is_lease_lost(
        store.heartbeat(&claimed.lease, LEASE, None).await
    ));

    let again = claim(&store).await;
    assert_eq!(again.task.attempts, 1);
    assert_eq!(again.input, b"t1");
    // Callbacks on processing only, none on the release.
    assert_eq!(
        drain_bodies(&store).await,
        ["t1:processing", "t1:processing"]
    );
}

pub(crate) async fn released_task_waits_for_its_delay_and_keeps_the_attempt(f: impl Fixture) {
    let store = f.open().await;
    create(&store, new_task("t1", "acme")).await;
    create(&store, new_task("t2", "acme")).await;
    let claimed = claim(&store).await;
    assert_eq!(claimed.task.id, "t1");
    store
        .release(&claimed.lease, SHORT_LEASE, true)
        .await
        .unwrap();
    assert_eq!(status(&store, "t1").await.attempts, 1);
    assert_eq!(store.stats().await.unwrap().submitted, 2);

    // Held back: the younger task goes first, then nothing.
    assert_eq!(claim(&store).await.task.id, "t2");
    assert!(try_claim(&store, LEASE).await.is_none());
    tokio::time::sleep(SHORT_WAIT).await;
    let again = claim(&store).await;
    assert_eq!(again.task.id, "t1");
    assert_eq!(again.task.attempts, 2);
}

pub(crate) async fn wait_for_work_returns_at_once_when_a_task_is_claimable(f: impl Fixture) {
    let store = f.open().await;
    create(&store, new_task("t1", "acme")).await;
    let waited = tokio::time::timeout(
        WAKE_DEADLINE,
        store.wait_for_work(&Models::Any, LONG_TIMEOUT),
    )
    .await;
    assert!(matches!(waited, Ok(Ok(()))), "{waited:?}");
}

/// A worker asleep on one node is woken by a create on another, and by the lease of a task
/// its worker abandoned running out.
pub(crate) async fn wait_for_work_wakes_on_create_and_on_lease_expiry(f: impl Fixture) {
    let worker_node = Arc::new(f.open().await);
    let api_node = f.open().await;
    let wait = || {
        let node = Arc::clone(&worker_node);
        tokio::spawn(async move {
            tokio::time::timeout(
                WAKE_DEADLINE,
                node.wait_for_work(&Models::Any, LONG_TIMEOUT),
            )
            .await
        })
    };

    let waiting = wait();
    tokio::time::sleep(SHORT_WAIT).await;
    assert!(!waiting.is_finished(), "nothing to wait for yet");
    create(&api_node, new_task("t1", "acme")).await;
    assert!(
        matches!(waiting.await.unwrap(), Ok(Ok(()))),
        "woken by the create"
    );

    let abandoned = try_claim(&*worker_node, SHORT_LEASE).await.unwrap();
    let started = Instant::now();
    assert!(
        matches!(wait().await.unwrap(), Ok(Ok(()))),
        "woken by the expiry"
    );
    assert!(
        started.elapsed() >= SHORT_LEASE / 2,
        "not before the lease ran out"
    );
    let again = claim(&*worker_node).await;
    assert_eq!(again.task.id, abandoned.task.id);
}

pub(crate) async fn wait_for_work_ignores_tasks_for_other_models(f: impl Fixture) {
    let store = f.open().await;
    create(&store, for_model("t1", "sdxl")).await;
    // The create's own wake-up (a notification, for some backends) may be on its way still.
    tokio::time::sleep(SHORT_WAIT).await;
    let started = Instant::now();
    store
        .wait_for_work(&only(&["sd15"]), SHORT_WAIT)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= SHORT_WAIT,
        "returned for another model's task"
    );
}

pub(crate) async fn deliveries_are_written_only_with_a_callback_url(f: impl Fixture) {
    let store = f.open().await;
    create(&store, with_callback("ok", "acme")).await;
    create(&store, with_callback("bad", "acme")).await;
    create(&store, new_task("quiet", "acme")).await;
    assert!(
        drain_bodies(&store).await.is_empty(),
        "no callback on submit"
    );

    let ok = claim(&store).await;
    let bad = claim(&store).await;
    let quiet = claim(&store).await;
    store.succeed(&ok.lease, "{}".into()).await.unwrap();
    store.fail(&bad.lease, "no".into()).await.unwrap();
    store.succeed(&quiet.lease, "{}".into()).await.unwrap();

    let first = store.claim_deliveries(LEASE, 100).await.unwrap();
    let seen: Vec<_> = first
        .iter()
        .map(|d| (d.task_id.as_str(), d.url.as_str(), d.body.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("ok", "https://hooks.example/ok", "ok:processing"),
            ("bad", "https://hooks.example/bad", "bad:processing"),
        ]
    );
    assert!(first.iter().all(|d| d.attempts == 0));
    for delivery in &first {
        store.delivered(&delivery.id).await.unwrap();
    }
    assert_eq!(drain_bodies(&store).await, ["ok:succeed", "bad:failed"]);
}

pub(crate) async fn deliveries_retry_deliver_and_abandon(f: impl Fixture) {
    let store = f.open().await;
    for id in ["a", "b", "c"] {
        create(&store, with_callback(id, "acme")).await;
        claim(&store).await;
    }
    let first = store.claim_deliveries(LEASE, 2).await.unwrap();
    let rest = store.claim_deliveries(LEASE, 100).await.unwrap();
    assert!(store.claim_deliveries(LEASE, 100).await.unwrap().is_empty());
    let (a, b, c) = (&first[0], &first[1], &rest[0]);
    assert_eq!(
        [&a.task_id, &b.task_id, &c.task_id],
        ["a", "b", "c"],
        "oldest first"
    );
    assert_eq!(rest.len(), 1);

    let now = now_ms();
    store.delivered(&a.id).await.unwrap();
    store
        .retry_delivery(&b.id, now + 60_000, "connection refused")
        .await
        .unwrap();
    store
        .retry_delivery(&c.id, now - 1, "timeout")
        .await
        .unwrap();
    let again = store.claim_deliveries(LEASE, 100).await.unwrap();
    assert_eq!(again.len(), 1, "b is not due yet: {again:?}");
    let retried = &again[0];
    assert_eq!(
        (&retried.id, &retried.body, retried.created_at),
        (&c.id, &c.body, c.created_at)
    );
    assert_eq!(retried.attempts, 1);

    store.abandon_delivery(&c.id, "HTTP 500").await.unwrap();
    store
        .retry_delivery(&b.id, now - 1, "HTTP 503")
        .await
        .unwrap();
    let again = store.claim_deliveries(LEASE, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((&again[0].id, again[0].attempts), (&b.id, 2));
    store.delivered(&b.id).await.unwrap();
    assert!(store.claim_deliveries(LEASE, 100).await.unwrap().is_empty());

    // Unknown ids (purged meanwhile) are no error.
    store.delivered("gone").await.unwrap();
    store.retry_delivery("gone", now, "x").await.unwrap();
    store.abandon_delivery("gone", "x").await.unwrap();
}

/// A delivery claimed by one node is not handed to another while its claim lasts; a sender
/// that dies loses it to the next claim once the lease runs out.
pub(crate) async fn a_claimed_delivery_is_out_until_its_lease_runs_out(f: impl Fixture) {
    let (node_a, node_b) = (f.open().await, f.open().await);
    create(&node_a, with_callback("t1", "acme")).await;
    claim(&node_a).await;
    let taken = node_a.claim_deliveries(SHORT_LEASE, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(node_b.claim_deliveries(LEASE, 10).await.unwrap().is_empty());
    tokio::time::sleep(SHORT_WAIT).await;
    let retaken = node_b.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(retaken, taken, "the same delivery, attempts unchanged");
}

pub(crate) async fn one_delivery_per_task_is_out_at_a_time(f: impl Fixture) {
    let store = f.open().await;
    create(&store, with_callback("t1", "acme")).await;
    let claimed = claim(&store).await;
    store.succeed(&claimed.lease, "{}".into()).await.unwrap();

    let processing = store.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(processing.len(), 1);
    assert_eq!(processing[0].body, "t1:processing");
    assert!(
        store.claim_deliveries(LEASE, 10).await.unwrap().is_empty(),
        "the succeed callback waits for the processing one"
    );
    store.delivered(&processing[0].id).await.unwrap();
    let succeed = store.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(succeed.len(), 1);
    assert_eq!(succeed[0].body, "t1:succeed");
}

pub(crate) async fn wait_for_deliveries_wakes_on_a_status_change(f: impl Fixture) {
    let sender = Arc::new(f.open().await);
    let worker = f.open().await;
    create(&worker, with_callback("t1", "acme")).await;
    let waiting = {
        let sender = Arc::clone(&sender);
        tokio::spawn(async move {
            tokio::time::timeout(WAKE_DEADLINE, sender.wait_for_deliveries(LONG_TIMEOUT)).await
        })
    };
    tokio::time::sleep(SHORT_WAIT).await;
    assert!(!waiting.is_finished(), "nothing due on submit");
    claim(&worker).await;
    assert!(matches!(waiting.await.unwrap(), Ok(Ok(()))));
    assert_eq!(sender.claim_deliveries(LEASE, 10).await.unwrap().len(), 1);

    // Nothing due while the only delivery is claimed: the wait lasts its whole timeout.
    let started = Instant::now();
    sender.wait_for_deliveries(SHORT_WAIT).await.unwrap();
    assert!(started.elapsed() >= SHORT_WAIT);
}

pub(crate) async fn unserved_counts_queued_tasks_no_live_worker_serves(f: impl Fixture) {
    let store = f.open().await;
    for (id, model) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
        create(&store, for_model(id, model)).await;
    }
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(m, n)| (m.to_string(), *n)).collect()
    };
    assert_eq!(
        store.unserved().await.unwrap(),
        counts(&[("a", 2), ("b", 1), ("c", 1)])
    );

    store
        .register_worker("gpu-1", &only(&["a", "b"]), LEASE)
        .await
        .unwrap();
    store
        .register_worker("gpu-2", &only(&["c"]), SHORT_LEASE)
        .await
        .unwrap();
    assert_eq!(store.unserved().await.unwrap(), counts(&[]));
    // Processing tasks are not queued.
    store.claim(&only(&["c"]), LEASE, 3).await.unwrap().unwrap();
    create(&store, for_model("c2", "c")).await;

    // gpu-2 was not renewed in time; gpu-1 stops.
    tokio::time::sleep(SHORT_WAIT).await;
    assert_eq!(store.unserved().await.unwrap(), counts(&[("c", 1)]));
    store.deregister_worker("gpu-1").await.unwrap();
    assert_eq!(
        store.unserved().await.unwrap(),
        counts(&[("a", 2), ("b", 1), ("c", 1)])
    );
    // Renewing brings a worker back; one serving any model serves everything.
    store
        .register_worker("gpu-2", &only(&["c"]), LEASE)
        .await
        .unwrap();
    store
        .register_worker("cpu", &Models::Any, LEASE)
        .await
        .unwrap();
    assert_eq!(store.unserved().await.unwrap(), counts(&[]));
    store.deregister_worker("cpu").await.unwrap();
    store.deregister_worker("unknown").await.unwrap();
    assert_eq!(
        store.unserved().await.unwrap(),
        counts(&[("a", 2), ("b", 1)])
    );
}

pub(crate) async fn purge_finished_returns_ids_and_keeps_unfinished_tasks(f: impl Fixture) {
    let store = f.open().await;
    for id in ["done", "failed", "running", "waiting"] {
        create(&store, with_callback(id, "acme")).await;
    }
    let done = claim(&store).await;
    let failed = claim(&store).await;
    claim(&store).await;
    store.succeed(&done.lease, "{}".into()).await.unwrap();
    store.fail(&failed.lease, "no".into()).await.unwrap();

    let cutoff = status(&store, "failed").await.updated_at;
    assert!(
        store
            .purge_finished(cutoff - 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    let mut purged = store.purge_finished(now_ms() + 1_000).await.unwrap();
    purged.sort();
    assert_eq!(purged, ["done", "failed"]);

    assert_eq!(store.find("acme", "done").await.unwrap(), None);
    assert_eq!(
        status(&store, "running").await.status,
        TaskStatus::Processing
    );
    assert_eq!(
        status(&store, "waiting").await.status,
        TaskStatus::Submitted
    );
    assert_eq!(drain_bodies(&store).await, ["running:processing"]);
    assert_eq!(
        store.stats().await.unwrap(),
        QueueStats {
            submitted: 1,
            processing: 1,
            ..QueueStats::default()
        }
    );
}

/// What a restart sees: the store dropped without closing, as a killed process leaves it.
pub(crate) async fn reopening_keeps_everything(f: impl Fixture) {
    let (succeeded, running) = {
        let store = f.open().await;
        let task = NewTask {
            external_task_id: Some("ext".into()),
            ..with_callback("done", "acme")
        };
        create(&store, task).await;
        create(&store, new_task("running", "acme")).await;
        create(&store, new_task("waiting", "acme")).await;
        store
            .register_worker("gpu-1", &only(&["other"]), LEASE)
            .await
            .unwrap();
        let done = claim(&store).await;
        let succeeded = store.succeed(&done.lease, "{}".into()).await.unwrap();
        let running = try_claim(&store, SHORT_LEASE).await.unwrap();
        (succeeded, running)
    };

    let store = f.open().await;
    assert_eq!(store.find("acme", "ext").await.unwrap(), Some(succeeded));
    assert_eq!(
        store.stats().await.unwrap(),
        QueueStats {
            submitted: 1,
            processing: 1,
            succeed: 1,
            failed: 0
        }
    );
    assert_eq!(
        store.unserved().await.unwrap(),
        BTreeMap::from([(MODEL.to_string(), 1)])
    );
    assert_eq!(
        drain_bodies(&store).await,
        ["done:processing", "done:succeed"]
    );
    let err = store.create(new_task("done", "acme"), LOOSE).await;
    assert!(err.is_err(), "task ids stay taken");

    // The interrupted task is picked up again once its lease runs out.
    tokio::time::sleep(SHORT_WAIT).await;
    let again = claim(&store).await;
    assert_eq!(again.task.id, "running");
    assert_eq!(again.task.attempts, 2);
    assert_eq!(again.input, b"running");
    assert!(is_lease_lost(
        store.heartbeat(&running.lease, LEASE, None).await
    ));
    assert_eq!(claim(&store).await.task.id, "waiting");
}

/// Nodes of a new deployment start together: each brings the schema up to date (or finds it
/// so) without tripping over the others.
pub(crate) async fn several_nodes_open_a_new_database_at_once(f: impl Fixture) {
    let (a, b, c, d) = tokio::join!(f.open(), f.open(), f.open(), f.open());
    let nodes = [a, b, c, d];
    let mut ids = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        ids.insert(create(node, new_task(&format!("t{i}"), "acme")).await.id);
    }
    assert_eq!(ids.len(), 4);
    assert_eq!(nodes[3].stats().await.unwrap().submitted, 4);
}
