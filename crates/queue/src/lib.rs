//! The durable task store behind the server: tasks, their leases, and the callback outbox.
//!
//! Nothing here knows about HTTP or images: a task carries an opaque `spec` (JSON written by the
//! server), the input bytes, and an opaque `result`. What the store guarantees:
//!
//! - [`Store::create`] returns only once the task is committed, and enforces admission limits
//!   (queue length, unfinished tasks per account) and `external_task_id` uniqueness per account
//!   atomically with the insert;
//! - a worker takes a task with [`Store::claim`], which gives it a [`Lease`] for a while; it
//!   keeps the lease with [`Store::heartbeat`]. A task whose lease ran out (its worker crashed,
//!   was killed or lost power) is claimed again; each claim counts as an attempt, and a task
//!   claimed `max_attempts` times without finishing ends `failed` with a reason;
//! - every status change of a task with a callback URL writes a [`Delivery`] in the same
//!   transaction (the outbox pattern), so no callback is lost across a crash.
//!
//! [`SqliteStore`] is the embedded implementation. The trait is what a PostgreSQL store
//! (`FOR UPDATE SKIP LOCKED`) implements to let several nodes share one queue.

mod sqlite;
mod task;

pub use sqlite::{SqliteOptions, SqliteStore};
pub use task::{
    Admission, CallbackRenderer, Claimed, Delivery, Lease, NewTask, QueueStats, StoreError, Task,
    TaskStatus, now_ms,
};

use std::time::Duration;

use async_trait::async_trait;

/// Persistence for tasks and callback deliveries. Object safe: the server holds an
/// `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a `submitted` task, committed before this returns.
    ///
    /// Fails with [`StoreError::ExternalIdTaken`] when the account already has a task with the
    /// same `external_task_id`, [`StoreError::QueueFull`] when `admission.max_queued` tasks are
    /// already `submitted`, and [`StoreError::AccountBusy`] when the account already has
    /// `admission.max_unfinished_per_account` tasks `submitted` or `processing`.
    async fn create(&self, task: NewTask, admission: Admission) -> Result<Task, StoreError>;

    /// The account's task whose task id, or else whose external task id, is `id`.
    /// Another account's task is `None`, as an unknown one.
    async fn find(&self, account: &str, id: &str) -> Result<Option<Task>, StoreError>;

    /// The account's tasks, newest first: page `page` (from 1) of `page_size` tasks.
    async fn list(&self, account: &str, page: u32, page_size: u32)
    -> Result<Vec<Task>, StoreError>;

    /// Takes the oldest claimable task: `submitted` and not held back (see [`Store::release`]),
    /// or `processing` with an expired lease. It becomes `processing`, its `attempts` grows by
    /// one, and the caller holds it for `lease_for`. A task found with `attempts >=
    /// max_attempts` is not handed out: it ends `failed` ("gave up after N attempts ...") and
    /// the next one is tried. `None` when nothing is claimable.
    async fn claim(
        &self,
        lease_for: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError>;

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
    /// deliveries. Returns their ids, so that the caller removes their result files.
    async fn purge_finished(&self, before_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` callback deliveries due at `now_ms`, oldest first.
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError>;

    /// Marks a delivery done (the receiver answered 2xx): it is deleted.
    async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError>;

    /// Records a failed attempt of a delivery, due again at `next_at_ms`.
    async fn retry_delivery(
        &self,
        delivery_id: &str,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Gives a delivery up after its last attempt: it is deleted, and `error` logged.
    async fn abandon_delivery(&self, delivery_id: &str, error: &str) -> Result<(), StoreError>;
}
