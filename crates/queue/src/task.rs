//! The store's data types.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Where a task is in its life. The wire names are Kling's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Accepted and waiting for a worker.
    Submitted,
    /// A worker holds it.
    Processing,
    /// Finished with results.
    Succeed,
    /// Finished without results; `status_msg` says why.
    Failed,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Submitted,
        TaskStatus::Processing,
        TaskStatus::Succeed,
        TaskStatus::Failed,
    ];

    /// Kling's name: `submitted`, `processing`, `succeed`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitted => "submitted",
            TaskStatus::Processing => "processing",
            TaskStatus::Succeed => "succeed",
            TaskStatus::Failed => "failed",
        }
    }

    /// Whether the task is over (succeed or failed).
    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Succeed | TaskStatus::Failed)
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| StoreError::Database(format!("unknown task status {s:?}")))
    }
}

/// A task to insert.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Unique id, chosen by the caller (the server makes an unguessable one).
    pub id: String,
    /// The account (access key) that owns it.
    pub account: String,
    /// The caller's own id, unique within the account.
    pub external_task_id: Option<String>,
    /// Where status changes are POSTed.
    pub callback_url: Option<String>,
    /// The model (or backend) that runs it: only workers serving it claim it (see [`Models`]).
    pub model: String,
    /// What to do, as the server wrote it (JSON); opaque to the store.
    pub spec: String,
    /// The input image's bytes, kept until the task finishes.
    pub input: Vec<u8>,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub account: String,
    pub external_task_id: Option<String>,
    pub callback_url: Option<String>,
    /// The model that runs it, as given at create.
    pub model: String,
    pub status: TaskStatus,
    /// Why it failed.
    pub status_msg: Option<String>,
    pub spec: String,
    /// What it produced (JSON written by the server); set when `succeed`.
    pub result: Option<String>,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// Progress of the current attempt in [0, 1], as last reported.
    pub progress: Option<f32>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last status change.
    pub updated_at: i64,
}

/// The models a worker serves, by the names tasks carry in [`NewTask::model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Models {
    /// Every model: a worker whose engine loads whatever a task asks for (the embedded server).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl Models {
    /// The names to filter on; `None` for any.
    pub(crate) fn names(&self) -> Option<&[String]> {
        match self {
            Models::Any => None,
            Models::Only(names) => Some(names),
        }
    }
}

/// Limits checked atomically with [`crate::TaskStore::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Most tasks `submitted` at once, over all accounts.
    pub max_queued: u64,
    /// Most tasks `submitted` or `processing` at once for one account.
    pub max_unfinished_per_account: u64,
}

/// Proof that a worker holds a task. Only the holder of the current lease can finish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task_id: String,
    /// Random per claim.
    pub token: String,
}

/// A claimed task, with its input and lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    pub input: Vec<u8>,
    pub lease: Lease,
}

/// Counts of tasks by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub submitted: u64,
    pub processing: u64,
    pub succeed: u64,
    pub failed: u64,
}

impl QueueStats {
    /// The count for one status.
    pub fn get(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Submitted => self.submitted,
            TaskStatus::Processing => self.processing,
            TaskStatus::Succeed => self.succeed,
            TaskStatus::Failed => self.failed,
        }
    }
}

/// A pending callback: POST `body` to `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Unique per delivery, stable across its retries (the `webhook-id`).
    pub id: String,
    pub task_id: String,
    pub url: String,
    /// The task object at the status change, rendered by the [`CallbackRenderer`].
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it was first due (Unix ms); retries stop some time after.
    pub created_at: i64,
}

/// Renders the callback body of a task right after a status change, inside the transaction
/// that makes the change. Set by the server, which owns the wire format.
pub type CallbackRenderer = Arc<dyn Fn(&Task) -> String + Send + Sync>;

/// Why a store operation failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Occurs when the account already has a task with this external task id.
    #[error("external_task_id \"{0}\" is already used by another task of this account")]
    ExternalIdTaken(String),
    /// Occurs when the queue already holds its maximum of waiting tasks.
    #[error("the queue is full ({max} tasks waiting); retry later")]
    QueueFull { max: u64 },
    /// Occurs when the account already has its maximum of unfinished tasks.
    #[error(
        "this account already has {max} unfinished tasks, the most allowed; retry when some finish"
    )]
    AccountBusy { max: u64 },
    /// Occurs when the lease expired and the task was taken again, or the task is gone.
    #[error("the lease on task {task_id} is no longer held")]
    LeaseLost { task_id: String },
    /// Occurs when the database fails (I/O, corruption, locked too long).
    #[error("task store: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Database(err.to_string())
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
