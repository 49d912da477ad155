//! The durable task store behind the server: tasks and their leases, the callback outbox, and
//! the registry of live workers.
//!
//! Nothing here knows about HTTP or images: a task carries an opaque `spec` (JSON written by the
//! server), the input bytes, and an opaque `result`. What a store guarantees:
//!
//! - [`TaskStore::create`] returns only once the task is committed, and enforces admission
//!   limits (queue length, unfinished tasks per account) and `external_task_id` uniqueness per
//!   account atomically with the insert, across every node sharing the store;
//! - a worker takes a task with [`TaskStore::claim`], which gives it a [`Lease`] for a while; it
//!   keeps the lease with [`TaskStore::heartbeat`]. A task whose lease ran out (its worker
//!   crashed, was killed or lost power) is claimed again; each claim counts as an attempt, and a
//!   task claimed `max_attempts` times without finishing ends `failed` with a reason. A worker
//!   claims only tasks for the [`Models`] it serves, and sleeps in [`TaskStore::wait_for_work`]
//!   until there may be one, without polling;
//! - every status change of a task with a callback URL writes a [`Delivery`] in the same
//!   transaction (the outbox pattern), so no callback is lost across a crash; a delivery is
//!   handed to one sender at a time, with a lease, by [`CallbackOutbox::claim_deliveries`];
//! - workers announce themselves and their models in a [`WorkerRegistry`], so that an API node
//!   can tell which queued tasks no live worker serves ([`WorkerRegistry::unserved`]).
//!
//! Implementations: [`SqliteStore`], embedded (one file, one process); and, with the `postgres`
//! feature (on by default), [`PostgresStore`], shared by several API and worker nodes. Both
//! pass one contract test suite (`src/contract.rs`).
//!
//! # A task for a model that no live worker serves
//!
//! It stays queued: a worker that restarts or joins picks it up, and failing tasks because a GPU
//! node was briefly down would lose work that was accepted. It still counts towards the queue
//! limit, so a model nobody serves cannot grow the queue without bound, and
//! [`WorkerRegistry::unserved`] counts such tasks per model, for `/ready` and `/metrics`.

mod common;
mod sqlite;
mod task;
mod wake;

#[cfg(feature = "postgres")]
mod postgres;

#[cfg(test)]
mod contract;

#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use task::{
    Admission, CallbackRenderer, Claimed, Delivery, Lease, Models, NewTask, QueueStats, StoreError,
    Task, TaskStatus, now_ms,
};

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

/// Everything a node needs from the store: one backend (one database) behind all three traits.
///
/// A supertrait rather than a struct holding one object per concern: the outbox is written in
/// the same transaction as the task's status change, so the halves cannot come from different
/// backends, and call sites keep a single `Arc<dyn Store>`. Implemented for every type that
/// implements the three.
pub trait Store: TaskStore + CallbackOutbox + WorkerRegistry {}

impl<T: TaskStore + CallbackOutbox + WorkerRegistry> Store for T {}

/// The life of a task: admission, lookup, leased claims, and its end. Object safe.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts a `submitted` task, committed before this returns.
    ///
    /// Fails with [`StoreError::ExternalIdTaken`] when the account already has a task with the
    /// same `external_task_id`, [`StoreError::QueueFull`] when `admission.max_queued` tasks are
    /// already `submitted`, and [`StoreError::AccountBusy`] when the account already has
    /// `admission.max_unfinished_per_account` tasks `submitted` or `processing`. The limits
    /// hold across every node sharing the store.
    async fn create(&self, task: NewTask, admission: Admission) -> Result<Task, StoreError>;

    /// The account's task whose task id, or else whose external task id, is `id`.
    /// Another account's task is `None`, as an unknown one.
    async fn find(&self, account: &str, id: &str) -> Result<Option<Task>, StoreError>;

    /// The account's tasks, newest first: page `page` (from 1) of `page_size` tasks.
    async fn list(&self, account: &str, page: u32, page_size: u32)
    -> Result<Vec<Task>, StoreError>;

    /// Takes the oldest claimable task for one of `models`: `submitted` and not held back (see
    /// [`TaskStore::release`]), or `processing` with an expired lease. It becomes
    /// `processing`, its `attempts` grows by one, and the caller holds it for `lease_for`. A
    /// task found with `attempts >= max_attempts` is not handed out: it ends `failed` ("gave up
    /// after N attempts ...") and the next one is tried. `None` when nothing is claimable.
    async fn claim(
        &self,
        models: &Models,
        lease_for: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError>;

    /// Returns when [`TaskStore::claim`] may find a task for `models`: at once when one is
    /// claimable now, else when a task is created or handed back (on any node sharing the
    /// store), when a lease or a release delay runs out, or after `timeout` at the latest.
    /// It may return without work (several workers wake for one task); claim then says.
    async fn wait_for_work(&self, models: &Models, timeout: Duration) -> Result<(), StoreError>;

    /// Extends the lease by `lease_for` from now, and records the progress in [0, 1] when
    /// given. [`StoreError::LeaseLost`] when the lease expired and someone else took the task,
    /// or the task is gone.
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_for: Duration,
        progress: Option<f32>,
    ) -> Result<(), StoreError>;

    /// Ends the task `succeed` with its (opaque) result. [`StoreError::LeaseLost`] when the
    /// lease is no longer held; the result must then be discarded.
    async fn succeed(&self, lease: &Lease, result: String) -> Result<Task, StoreError>;

    /// Ends the task `failed` with `reason` (shown to the client as `task_status_msg`).
    async fn fail(&self, lease: &Lease, reason: String) -> Result<Task, StoreError>;

    /// Hands the task back: `submitted` again, claimable after `delay`. With `count_attempt`
    /// false (graceful shutdown) the attempt is not counted.
    async fn release(
        &self,
        lease: &Lease,
        delay: Duration,
        count_attempt: bool,
    ) -> Result<(), StoreError>;

    /// Counts of tasks by status.
    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// Deletes finished tasks last updated before `before_ms` (Unix ms), with their inputs and
    /// deliveries. Returns their ids, so that the caller removes their results.
    async fn purge_finished(&self, before_ms: i64) -> Result<Vec<String>, StoreError>;
}

/// The callback outbox: deliveries written with each status change, sent by whichever node
/// claims them. Object safe.
#[async_trait]
pub trait CallbackOutbox: Send + Sync + 'static {
    /// Takes up to `limit` due deliveries, oldest first, for `lease_for`: until then no other
    /// call, on any node, hands them out again, so each is sent once unless its sender dies or
    /// outlasts the lease (make `lease_for` longer than a send's timeout). At most one
    /// delivery per task is out at a time, so that a task's callbacks arrive in order.
    async fn claim_deliveries(
        &self,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Returns when [`CallbackOutbox::claim_deliveries`] may find a delivery: at once when one
    /// is due now, else when one is written or finished (on any node), when a retry falls due
    /// or a claim runs out, or after `timeout` at the latest.
    async fn wait_for_deliveries(&self, timeout: Duration) -> Result<(), StoreError>;

    /// Marks a delivery done (the receiver answered 2xx): it is deleted.
    async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError>;

    /// Records a failed attempt of a delivery, due again at `next_at_ms`; its claim ends.
    async fn retry_delivery(
        &self,
        delivery_id: &str,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Gives a delivery up after its last attempt: it is deleted, and `error` logged.
    async fn abandon_delivery(&self, delivery_id: &str, error: &str) -> Result<(), StoreError>;
}

/// Live workers and the models they serve. Object safe.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Announces (or renews) worker `worker_id`, serving `models`, as live for `ttl`. Call it
    /// at start and then every fraction of `ttl`; a worker not renewed in time counts as gone.
    async fn register_worker(
        &self,
        worker_id: &str,
        models: &Models,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Removes a worker that stops (its tasks, if any, are released separately).
    async fn deregister_worker(&self, worker_id: &str) -> Result<(), StoreError>;

    /// Queued (`submitted`) tasks per model that no live worker serves; models with none are
    /// left out.
    async fn unserved(&self) -> Result<BTreeMap<String, u64>, StoreError>;
}
