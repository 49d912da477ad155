//! [`SqliteStore`]: the embedded store, one SQLite file in WAL mode.
//!
//! Layout: `tasks` holds one row per task (its lease too) and `deliveries` the callback outbox
//! (deleted with their task by a cascading foreign key). Input images are files next to the
//! database (`<name>.inputs/<task id>`), written and flushed before the task's row commits and
//! deleted when it finishes: megabytes of image data in the database made the WAL grow faster
//! than checkpoints could fold it back while readers were busy, and every few hundred creates
//! one commit stalled for a whole checkpoint (create p99 of ~340 ms in the load benchmark).
//!
//! Concurrency: every write runs in a `BEGIN IMMEDIATE` transaction on a pool of exactly one
//! connection, so writers queue in the pool (in process, fairly) instead of racing for SQLite's
//! write lock and failing with "database is locked". Reads (`find`, `list`, `stats`,
//! `unserved`, what is due next) use a separate pool and, thanks to WAL, never wait for a writer.
//!
//! Wake-ups (`wait_for_work`, `wait_for_deliveries`) are in process: every store opened on the
//! same file in this process shares one [`Wakers`], raised after each commit that may have made
//! something claimable. Another process writing the same file is noticed at the caller's timeout.
//! Model filters bind the served models as a JSON array, read with `json_each`.
//!
//! Checkpoints (copying the WAL back into the main file, and with it a sync of the file) run
//! on a connection of their own a few times a second instead of inside whichever commit
//! crosses SQLite's threshold: with ~300 KB inputs that threshold is crossed every dozen
//! creates, and the unlucky create waited for the whole copy. Measured with
//! `examples/create_load.rs` (64 clients, 300 KB inputs, `synchronous=FULL`, a shared 2-core
//! machine), create throughput went from 200-340/s to 530-670/s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::common::{
    attempts_from, clamp_progress, count, gave_up_reason, lease_lost, limit, log_abandoned, millis,
    one_per_task,
};
use crate::wake::{Wakers, due_in, sleep_until_woken};
use crate::{
    Admission, CallbackOutbox, CallbackRenderer, Claimed, Delivery, Lease, Models, NewTask,
    QueueStats, StoreError, Task, TaskStatus, TaskStore, WorkerRegistry, now_ms,
};

/// The schema version this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for a lock held by another process before failing. Within this
/// process writes never wait on SQLite's lock: they queue for the single writer connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections. Reads are short (no input blobs are read outside claims), so a few suffice.
const READER_CONNECTIONS: u32 = 4;

/// How often the background checkpoint runs.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// WAL pages (4 KiB) after which a commit checkpoints by itself: a fallback for when the
/// background checkpoint falls behind, well above what it lets accumulate.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// Size the WAL file is truncated back to after a checkpoint, so a burst does not leave a
/// large file behind.
const WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// The schema, one step per version: a file at version `v` (its `PRAGMA user_version`) gets
/// the steps after the `v`th.
const MIGRATIONS: [&str; 2] = [
    "
CREATE TABLE IF NOT EXISTS tasks (
    id               TEXT PRIMARY KEY NOT NULL,
    account          TEXT NOT NULL,
    external_task_id TEXT,
    callback_url     TEXT,
    status           TEXT NOT NULL,
    status_msg       TEXT,
    spec             TEXT NOT NULL,
    result           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    progress         REAL,
    lease_token      TEXT,
    lease_until      INTEGER,
    not_before       INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (account, external_task_id)
);
-- Claim order (oldest first within a status) and counts by status.
CREATE INDEX IF NOT EXISTS tasks_status_created ON tasks (status, created_at);
-- Listing an account's tasks newest first.
CREATE INDEX IF NOT EXISTS tasks_account_created ON tasks (account, created_at);
-- Counting an account's unfinished tasks without walking its whole history.
CREATE INDEX IF NOT EXISTS tasks_account_status ON tasks (account, status);
-- Purging finished tasks by age.
CREATE INDEX IF NOT EXISTS tasks_finished_updated ON tasks (updated_at)
    WHERE status IN ('succeed', 'failed');

CREATE TABLE IF NOT EXISTS deliveries (
    id         TEXT PRIMARY KEY NOT NULL,
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    body       TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_next_at ON deliveries (next_at);
-- Cascading deletes from tasks look deliveries up by task.
CREATE INDEX IF NOT EXISTS deliveries_task ON deliveries (task_id);
",
    // Version 2: the model that runs a task (older tasks get '': any worker takes them), the
    // claim on a delivery, and live workers (`models` a JSON array; NULL for any model).
    "
ALTER TABLE tasks ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN claimed_until INTEGER;
CREATE TABLE workers (
    id         TEXT PRIMARY KEY NOT NULL,
    models     TEXT,
    expires_at INTEGER NOT NULL
);
",
];

/// Whether a task's `model` is one of the JSON array bound as `?N` (NULL: any model).
macro_rules! model_filter {
    ($n:literal) => {
        concat!(
            "(?",
            $n,
            " IS NULL OR model IN (SELECT value FROM json_each(?",
            $n,
            ")))"
        )
    };
}

/// The `tasks` columns that make a [`Task`], in the order [`task_from_row`] reads them.
macro_rules! task_columns {
    () => {
        "id, account, external_task_id, callback_url, status, status_msg, spec, result, \
         attempts, progress, created_at, updated_at, model"
    };
}

/// How to open the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created with its folder when missing.
    pub path: PathBuf,
    /// Whether each commit waits for the disk (`synchronous=FULL`): acknowledged tasks then
    /// survive power loss, not only crashes.
    pub durable_commits: bool,
}

/// The embedded store: one SQLite file, shared by the server's handlers and workers.
///
/// Writes are serialized through one connection; reads go through a small pool of their own.
pub struct SqliteStore {
    /// Exactly one connection: write transactions run one after another.
    writer: SqlitePool,
    inputs: InputFiles,
    reader: SqlitePool,
    renderer: CallbackRenderer,
    /// Shared with the other stores of this file in this process.
    wakers: Arc<Wakers>,
    /// Checkpoints the WAL on its own connection; stopped when the store is dropped.
    checkpoint_task: tokio::task::JoinHandle<()>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpoint_task.abort();
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("writer", &self.writer)
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `options.path` and brings its schema up
    /// to date. `renderer` writes the body of each callback delivery.
    ///
    /// Fails when the folder or file cannot be created, the file is not a database, or it was
    /// written by a newer version of this store.
    pub async fn open(
        options: SqliteOptions,
        renderer: CallbackRenderer,
    ) -> Result<SqliteStore, StoreError> {
        let path = &options.path;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|err| {
                StoreError::Database(format!("cannot create {}: {err}", dir.display()))
            })?;
        }
        let synchronous = if options.durable_commits {
            SqliteSynchronous::Full
        } else {
            // In WAL mode NORMAL loses no committed data on a process crash, only on power loss.
            SqliteSynchronous::Normal
        };
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(synchronous)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string());

        // No ping before each acquire (sqlx's default): it is one more round trip to the
        // connection's thread per statement, and a broken connection fails the statement anyway.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                connect
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(|err| open_error(path, &err))?;
        migrate(&writer).await.map_err(|err| match err {
            StoreError::Database(msg) => StoreError::Database(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        // The file is in WAL mode now (a lasting property of the file), so readers need not
        // set it; setting it needs a lock they would otherwise contend for.
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(READER_CONNECTIONS)
            .connect_with(connect.clone())
            .await
            .map_err(|err| open_error(path, &err))?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await
            .map_err(|err| open_error(path, &err))?;

        let inputs = InputFiles {
            dir: path.with_extension("inputs"),
            durable: options.durable_commits,
        };
        inputs.remove_orphans(&writer).await?;
        Ok(SqliteStore {
            writer,
            inputs,
            reader,
            renderer,
            wakers: wakers_of(path),
            checkpoint_task: tokio::spawn(checkpoint_task(checkpointer)),
        })
    }

    /// Closes every connection, waiting for work in flight; the WAL is checkpointed into the
    /// main file. Dropping the store without this is safe: committed data is kept either way.
    pub async fn close(&self) {
        self.checkpoint_task.abort();
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction on the writer connection. IMMEDIATE takes SQLite's write
    /// lock at once, so a transaction that reads before writing cannot fail to upgrade when
    /// another process wrote in between.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Queues a callback of `task` as it is now, when it has a callback URL.
    async fn record_delivery(
        &self,
        conn: &mut SqliteConnection,
        task: &Task,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(url) = &task.callback_url else {
            return Ok(());
        };
        let body = (self.renderer)(task);
        sqlx::query(
            "INSERT INTO deliveries (id, task_id, url, body, attempts, next_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&task.id)
        .bind(url)
        .bind(body)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Ends a task `failed` with `reason` whatever its state, outside any lease: the claim
    /// loop's way to drop tasks it will not hand out.
    async fn give_up(
        &self,
        conn: &mut SqliteConnection,
        task_id: &str,
        reason: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE tasks SET status = 'failed', status_msg = ?1, lease_token = NULL, \
             lease_until = NULL, updated_at = ?2 WHERE id = ?3 RETURNING ",
            task_columns!()
        ))
        .bind(reason)
        .bind(now)
        .bind(task_id)
        .fetch_one(&mut *conn)
        .await?;
        let task = task_from_row(&row)?;
        self.record_delivery(conn, &task, now).await
    }

    /// The insert of [`Store::create`], admission checks included, as one statement: atomic
    /// on its own (no BEGIN/COMMIT round trips to the connection's thread, which cost more
    /// than the work when the server is busy). Only a refused create asks why.
    async fn insert(&self, task: &NewTask, admission: Admission) -> Result<Task, StoreError> {
        // created_at is read inside the statement, under the write lock, so that tasks are
        // ordered as they were committed.
        let inserted: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO tasks (id, account, external_task_id, callback_url, status, spec, \
             attempts, not_before, created_at, updated_at, model) \
             SELECT ?1, ?2, ?3, ?4, 'submitted', ?5, 0, 0, now, now, ?8 \
             FROM (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now) \
             WHERE (SELECT COUNT(*) FROM tasks WHERE status = 'submitted') < ?6 \
             AND (SELECT COUNT(*) FROM tasks \
                  WHERE account = ?2 AND status IN ('submitted', 'processing')) < ?7 \
             RETURNING created_at",
        )
        .bind(&task.id)
        .bind(&task.account)
        .bind(&task.external_task_id)
        .bind(&task.callback_url)
        .bind(&task.spec)
        .bind(limit(admission.max_queued))
        .bind(limit(admission.max_unfinished_per_account))
        .bind(&task.model)
        .fetch_optional(&self.writer)
        .await;
        let created_at = match inserted {
            Ok(Some(created_at)) => created_at,
            Ok(None) => return Err(self.refusal(&task.account, admission).await?),
            Err(err)
                if err
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation()) =>
            {
                let id = task.external_task_id.clone().unwrap_or_default();
                return Err(StoreError::ExternalIdTaken(id));
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Task {
            id: task.id.clone(),
            account: task.account.clone(),
            external_task_id: task.external_task_id.clone(),
            callback_url: task.callback_url.clone(),
            model: task.model.clone(),
            status: TaskStatus::Submitted,
            status_msg: None,
            spec: task.spec.clone(),
            result: None,
            attempts: 0,
            progress: None,
            created_at,
            updated_at: created_at,
        })
    }

    /// Which admission limit refused a create.
    async fn refusal(&self, account: &str, admission: Admission) -> Result<StoreError, StoreError> {
        let (queued, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'submitted'), \
             (SELECT COUNT(*) FROM tasks \
              WHERE account = ?1 AND status IN ('submitted', 'processing'))",
        )
        .bind(account)
        .fetch_one(&self.reader)
        .await?;
        Ok(if count(queued) >= admission.max_queued {
            StoreError::QueueFull {
                max: admission.max_queued,
            }
        } else if count(unfinished) >= admission.max_unfinished_per_account {
            StoreError::AccountBusy {
                max: admission.max_unfinished_per_account,
            }
        } else {
            // Both counts fell between the insert and this read: a task finished meanwhile.
            StoreError::QueueFull {
                max: admission.max_queued,
            }
        })
    }

    /// Ends the leased task with `status` (`succeed` with `result`, or `failed` with
    /// `reason`), drops its input and queues its callback.
    async fn finish(
        &self,
        lease: &Lease,
        status: TaskStatus,
        result: Option<String>,
        reason: Option<String>,
    ) -> Result<Task, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE tasks SET status = ?1, result = ?2, status_msg = ?3, \
             progress = CASE WHEN ?1 = 'succeed' THEN 1.0 ELSE progress END, \
             lease_token = NULL, lease_until = NULL, updated_at = ?4 \
             WHERE id = ?5 AND lease_token = ?6 AND status = 'processing' RETURNING ",
            task_columns!()
        ))
        .bind(status.as_str())
        .bind(result)
        .bind(reason)
        .bind(now)
        .bind(&lease.task_id)
        .bind(&lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(lease_lost(lease));
        };
        let task = task_from_row(&row)?;
        self.record_delivery(&mut tx, &task, now).await?;
        tx.commit().await?;
        self.wakers.deliveries.notify_waiters();
        self.inputs.remove(&task.id).await;
        Ok(task)
    }

    /// When a task for `models` is next claimable (Unix ms; in the past when one is now).
    async fn next_task_due(&self, models: Option<&str>) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT MIN(due) FROM ( \
             SELECT MIN(not_before) AS due FROM tasks WHERE status = 'submitted' AND ",
            model_filter!(1),
            " UNION ALL SELECT MIN(lease_until) + 1 FROM tasks WHERE status = 'processing' AND ",
            model_filter!(1),
            ")"
        ))
        .bind(models)
        .fetch_one(&self.reader)
        .await?)
    }

    /// When a delivery is next claimable: its retry time, or the end of the claim on its task's
    /// deliveries when later.
    async fn next_delivery_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(MAX(d.next_at, COALESCE( \
                (SELECT MAX(o.claimed_until) FROM deliveries o WHERE o.task_id = d.task_id), 0))) \
             FROM deliveries d",
        )
        .fetch_one(&self.reader)
        .await?)
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn create(&self, mut task: NewTask, admission: Admission) -> Result<Task, StoreError> {
        // Written before the write lock is taken, so other writers do not wait for the disk.
        let input = std::mem::take(&mut task.input);
        self.inputs.write(&task.id, input).await?;
        let created = self.insert(&task, admission).await;
        match created {
            Ok(_) => self.wakers.work.notify_waiters(),
            Err(_) => self.inputs.remove(&task.id).await,
        }
        created
    }

    async fn find(&self, account: &str, id: &str) -> Result<Option<Task>, StoreError> {
        let by_id = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = ?1 AND account = ?2"
        ))
        .bind(id)
        .bind(account)
        .fetch_optional(&self.reader)
        .await?;
        let row = match by_id {
            Some(row) => Some(row),
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE account = ?1 AND external_task_id = ?2"
                ))
                .bind(account)
                .bind(id)
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list(
        &self,
        account: &str,
        page: u32,
        page_size: u32,
    ) -> Result<Vec<Task>, StoreError> {
        let offset = i64::from(page.max(1) - 1) * i64::from(page_size);
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE account = ?1 ORDER BY created_at DESC, rowid DESC \
             LIMIT ?2 OFFSET ?3"
        ))
        .bind(account)
        .bind(i64::from(page_size))
        .bind(offset)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn claim(
        &self,
        models: &Models,
        lease_for: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError> {
        // Zero attempts would fail every task unseen; one is the least that makes sense.
        let max_attempts = i64::from(max_attempts.max(1));
        let models = models_json(models);
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // Tasks ended here; their inputs are deleted once that is committed.
        let mut given_up = Vec::new();
        let claimed = loop {
            // Oldest first over both kinds of claimable task. rowid breaks ties within a
            // millisecond: it only grows, and it ends every index entry, so both queries
            // walk `tasks_status_created` in order.
            let waiting = sqlx::query(concat!(
                "SELECT id, attempts, created_at, rowid, FALSE FROM tasks \
                 WHERE status = 'submitted' AND not_before <= ?1 AND ",
                model_filter!(2),
                " ORDER BY created_at, rowid LIMIT 1"
            ))
            .bind(now)
            .bind(&models)
            .fetch_optional(&mut *tx)
            .await?;
            let abandoned = sqlx::query(concat!(
                "SELECT id, attempts, created_at, rowid, TRUE FROM tasks \
                 WHERE status = 'processing' AND lease_until < ?1 AND ",
                model_filter!(2),
                " ORDER BY created_at, rowid LIMIT 1"
            ))
            .bind(now)
            .bind(&models)
            .fetch_optional(&mut *tx)
            .await?;
            let candidates = [waiting, abandoned]
                .into_iter()
                .flatten()
                .map(|row| -> Result<Candidate, StoreError> {
                    Ok(Candidate {
                        id: row.try_get(0)?,
                        attempts: row.try_get(1)?,
                        order: (row.try_get(2)?, row.try_get(3)?),
                        lease_expired: row.try_get(4)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let Some(Candidate {
                id,
                attempts,
                lease_expired,
                ..
            }) = candidates.into_iter().min_by_key(|c| c.order)
            else {
                break None;
            };

            if attempts >= max_attempts {
                let reason = gave_up_reason(attempts, lease_expired);
                self.give_up(&mut tx, &id, reason, now).await?;
                given_up.push(id);
                continue;
            }
            let Some(input) = self.inputs.read(&id).await? else {
                // Cannot happen through this store; failing the task keeps the queue moving.
                tracing::error!(task_id = %id, "task has no input in the store");
                let reason = "the task's input is missing from the task store".to_owned();
                self.give_up(&mut tx, &id, reason, now).await?;
                continue;
            };

            let token = Uuid::new_v4().to_string();
            let row = sqlx::query(concat!(
                "UPDATE tasks SET status = 'processing', attempts = attempts + 1, \
                 lease_token = ?1, lease_until = ?2, progress = NULL, status_msg = NULL, \
                 updated_at = ?3 WHERE id = ?4 RETURNING ",
                task_columns!()
            ))
            .bind(&token)
            .bind(now.saturating_add(millis(lease_for)))
            .bind(now)
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            let task = task_from_row(&row)?;
            self.record_delivery(&mut tx, &task, now).await?;
            break Some(Claimed {
                lease: Lease { task_id: id, token },
                task,
                input,
            });
        };
        tx.commit().await?;
        self.wakers.deliveries.notify_waiters();
        for id in &given_up {
            self.inputs.remove(id).await;
        }
        Ok(claimed)
    }

    async fn wait_for_work(&self, models: &Models, timeout: Duration) -> Result<(), StoreError> {
        let notified = self.wakers.work.notified();
        let due = self.next_task_due(models_json(models).as_deref()).await?;
        sleep_until_woken(notified, due_in(due, now_ms()), timeout).await;
        Ok(())
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_for: Duration,
        progress: Option<f32>,
    ) -> Result<(), StoreError> {
        let progress = clamp_progress(progress).map(f64::from);
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // An expired lease nobody took yet is still ours: renewing it is harmless.
        let updated = sqlx::query(
            "UPDATE tasks SET lease_until = ?1, progress = COALESCE(?2, progress) \
             WHERE id = ?3 AND lease_token = ?4 AND status = 'processing'",
        )
        .bind(now.saturating_add(millis(lease_for)))
        .bind(progress)
        .bind(&lease.task_id)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(lease_lost(lease));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn succeed(&self, lease: &Lease, result: String) -> Result<Task, StoreError> {
        self.finish(lease, TaskStatus::Succeed, Some(result), None)
            .await
    }

    async fn fail(&self, lease: &Lease, reason: String) -> Result<Task, StoreError> {
        self.finish(lease, TaskStatus::Failed, None, Some(reason))
            .await
    }

    async fn release(
        &self,
        lease: &Lease,
        delay: Duration,
        count_attempt: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // No callback: the SPEC reports processing, succeed and failed only.
        let updated = sqlx::query(
            "UPDATE tasks SET status = 'submitted', not_before = ?1, \
             attempts = CASE WHEN ?2 THEN attempts ELSE MAX(attempts - 1, 0) END, \
             lease_token = NULL, lease_until = NULL, progress = NULL, updated_at = ?3 \
             WHERE id = ?4 AND lease_token = ?5 AND status = 'processing'",
        )
        .bind(now.saturating_add(millis(delay)))
        .bind(count_attempt)
        .bind(now)
        .bind(&lease.task_id)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(lease_lost(lease));
        }
        tx.commit().await?;
        self.wakers.work.notify_waiters();
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM tasks GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        let mut stats = QueueStats::default();
        for row in rows {
            let status: TaskStatus = row.try_get::<String, _>(0)?.parse()?;
            let n = count(row.try_get(1)?);
            match status {
                TaskStatus::Submitted => stats.submitted = n,
                TaskStatus::Processing => stats.processing = n,
                TaskStatus::Succeed => stats.succeed = n,
                TaskStatus::Failed => stats.failed = n,
            }
        }
        Ok(stats)
    }

    async fn purge_finished(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        // Deliveries go with their task (ON DELETE CASCADE); finished tasks have no input.
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM tasks WHERE status IN ('succeed', 'failed') AND updated_at < ?1 \
             RETURNING id",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }
}

#[async_trait]
impl CallbackOutbox for SqliteStore {
    async fn claim_deliveries(
        &self,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, task_id, url, body, attempts, created_at FROM deliveries d \
             WHERE next_at <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1) \
             AND NOT EXISTS (SELECT 1 FROM deliveries o \
                 WHERE o.task_id = d.task_id AND o.id <> d.id AND o.claimed_until > ?1) \
             ORDER BY created_at, rowid LIMIT ?2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let deliveries = one_per_task(rows.iter().map(delivery_from_row))?;
        for delivery in &deliveries {
            sqlx::query("UPDATE deliveries SET claimed_until = ?1 WHERE id = ?2")
                .bind(now.saturating_add(millis(lease_for)))
                .bind(&delivery.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deliveries)
    }

    async fn wait_for_deliveries(&self, timeout: Duration) -> Result<(), StoreError> {
        let notified = self.wakers.deliveries.notified();
        let due = self.next_delivery_due().await?;
        sleep_until_woken(notified, due_in(due, now_ms()), timeout).await;
        Ok(())
    }

    async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM deliveries WHERE id = ?1")
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.wakers.deliveries.notify_waiters();
        Ok(())
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // A delivery purged meanwhile (its task was purged) is simply not updated.
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, next_at = ?1, last_error = ?2, \
             claimed_until = NULL WHERE id = ?3",
        )
        .bind(next_at_ms)
        .bind(error)
        .bind(delivery_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wakers.deliveries.notify_waiters();
        Ok(())
    }

    async fn abandon_delivery(&self, delivery_id: &str, error: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM deliveries WHERE id = ?1 RETURNING task_id, url, attempts, created_at",
        )
        .bind(delivery_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wakers.deliveries.notify_waiters();
        if let Some(row) = row {
            log_abandoned(
                delivery_id,
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                error,
            );
        }
        Ok(())
    }
}

#[async_trait]
impl WorkerRegistry for SqliteStore {
    async fn register_worker(
        &self,
        worker_id: &str,
        models: &Models,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // Workers that stopped without saying so (killed, lost) would pile up otherwise.
        sqlx::query("DELETE FROM workers WHERE expires_at <= ?1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO workers (id, models, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET models = excluded.models, \
             expires_at = excluded.expires_at",
        )
        .bind(worker_id)
        .bind(models_json(models))
        .bind(now.saturating_add(millis(ttl)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deregister_worker(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM workers WHERE id = ?1")
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unserved(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT model, COUNT(*) FROM tasks t WHERE status = 'submitted' \
             AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.expires_at > ?1 \
                 AND (w.models IS NULL OR t.model IN (SELECT value FROM json_each(w.models)))) \
             GROUP BY model",
        )
        .bind(now_ms())
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(m, n)| (m, count(n))).collect())
    }
}

/// A task [`TaskStore::claim`] may take next.
struct Candidate {
    id: String,
    attempts: i64,
    /// (created_at, rowid): smaller is older.
    order: (i64, i64),
    /// Processing with its lease run out, rather than submitted.
    lease_expired: bool,
}

/// Copies the WAL back into the main file now and then. PASSIVE never waits for, nor blocks,
/// readers or the writer; frames it cannot copy yet are copied next time.
async fn checkpoint_task(checkpointer: SqlitePool) {
    let mut interval = tokio::time::interval(CHECKPOINT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(err) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&checkpointer)
            .await
        {
            // Commits checkpoint by themselves past WAL_AUTOCHECKPOINT_PAGES meanwhile.
            tracing::warn!(error = %err, "task store: background WAL checkpoint failed");
        }
    }
}

/// Creates the tables when the file is new; refuses a file from a newer schema.
async fn migrate(writer: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}, newer than this program's \
             {SCHEMA_VERSION}; upgrade the program or use another file"
        )));
    }
    if version < SCHEMA_VERSION {
        for step in &MIGRATIONS[usize::try_from(version).unwrap_or(0)..] {
            sqlx::raw_sql(step).execute(&mut *tx).await?;
        }
        // PRAGMA takes no bound parameters; the value is a constant.
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The input images of unfinished tasks, one file each, named by task id.
#[derive(Debug)]
struct InputFiles {
    dir: PathBuf,
    /// Flush each file (and the folder entry) to disk before the task commits.
    durable: bool,
}

impl InputFiles {
    fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    /// Writes the file under a temporary name, then renames it, so a crash never leaves a
    /// partial input under a task's name.
    async fn write(&self, task_id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (dir, path, durable) = (self.dir.clone(), self.path(task_id), self.durable);
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let partial = path.with_extension("partial");
            let mut file = std::fs::File::create(&partial)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            if durable {
                file.sync_all()?;
            }
            std::fs::rename(&partial, &path)?;
            if durable {
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|err| StoreError::Database(format!("writing an input panicked: {err}")))?;
        written.map_err(|err| {
            StoreError::Database(format!("cannot write the input of task {task_id}: {err}"))
        })
    }

    /// The input of a task, `None` when it has none.
    async fn read(&self, task_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path(task_id)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::Database(format!(
                "cannot read the input of task {task_id}: {err}"
            ))),
        }
    }

    /// Deletes a finished task's input; a failure only leaves a file for the next start.
    async fn remove(&self, task_id: &str) {
        if let Err(err) = tokio::fs::remove_file(self.path(task_id)).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(task_id, error = %err, "task store: cannot delete an input");
            }
        }
    }

    /// At start: deletes inputs whose task is finished or was never committed (a crash
    /// between the file and the row), and partial files.
    async fn remove_orphans(&self, writer: &SqlitePool) -> Result<(), StoreError> {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return Ok(());
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let live: Option<String> = sqlx::query_scalar(
                "SELECT id FROM tasks WHERE id = ?1 AND status IN ('submitted', 'processing')",
            )
            .bind(&name)
            .fetch_optional(writer)
            .await?;
            if live.is_none() {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(())
    }
}

/// Reads a row selected with [`task_columns!`]. Odd data (an unknown status, a negative
/// attempt count, a wrong type) is an error, not a panic.
fn task_from_row(row: &SqliteRow) -> Result<Task, StoreError> {
    let id: String = row.try_get(0)?;
    let status: String = row.try_get(4)?;
    let progress: Option<f64> = row.try_get(9)?;
    Ok(Task {
        account: row.try_get(1)?,
        external_task_id: row.try_get(2)?,
        callback_url: row.try_get(3)?,
        status: status
            .parse()
            .map_err(|_| StoreError::Database(format!("task {id}: unknown status {status:?}")))?,
        status_msg: row.try_get(5)?,
        spec: row.try_get(6)?,
        result: row.try_get(7)?,
        attempts: attempts_from(row.try_get(8)?)?,
        progress: progress.map(|p| p as f32),
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
        model: row.try_get(12)?,
        id,
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.try_get(0)?,
        task_id: row.try_get(1)?,
        url: row.try_get(2)?,
        body: row.try_get(3)?,
        attempts: attempts_from(row.try_get(4)?)?,
        created_at: row.try_get(5)?,
    })
}

/// The served models as bound to [`model_filter!`]: a JSON array, NULL for any.
fn models_json(models: &Models) -> Option<String> {
    models
        .names()
        .map(|names| serde_json::Value::from(names).to_string())
}

/// The wake-ups of the stores of one file in this process, keyed by its canonical path.
fn wakers_of(path: &Path) -> Arc<Wakers> {
    static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Wakers>>>> = LazyLock::new(Mutex::default);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open.retain(|_, wakers| wakers.strong_count() > 0);
    if let Some(wakers) = open.get(&key).and_then(Weak::upgrade) {
        return wakers;
    }
    let wakers = Arc::new(Wakers::default());
    open.insert(key, Arc::downgrade(&wakers));
    wakers
}

fn open_error(path: &Path, err: &sqlx::Error) -> StoreError {
    StoreError::Database(format!("cannot open {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tempfile::TempDir;

    use super::*;
    use crate::contract::{Fixture, store_contract};

    /// A fresh folder; the store's own folder inside it is created by `open`.
    struct SqliteFixture {
        dir: TempDir,
    }

    impl SqliteFixture {
        fn new() -> SqliteFixture {
            SqliteFixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("data").join("tasks.sqlite")
        }
    }

    #[async_trait(?Send)]
    impl Fixture for SqliteFixture {
        type Store = SqliteStore;

        async fn open(&self) -> SqliteStore {
            let options = SqliteOptions {
                path: self.path(),
                durable_commits: true,
            };
            let renderer: CallbackRenderer =
                Arc::new(|task: &Task| format!("{}:{}", task.id, task.status.as_str()));
            SqliteStore::open(options, renderer).await.unwrap()
        }

        async fn input_count(&self) -> u64 {
            let dir = self.path().with_extension("inputs");
            std::fs::read_dir(dir).map_or(0, |entries| entries.count() as u64)
        }
    }

    store_contract!(SqliteFixture::new());

    fn new_task(id: &str) -> NewTask {
        NewTask {
            id: id.to_owned(),
            account: "acme".to_owned(),
            external_task_id: None,
            callback_url: None,
            model: "infill".to_owned(),
            spec: "{}".to_owned(),
            input: id.as_bytes().to_vec(),
        }
    }

    const LOOSE: Admission = Admission {
        max_queued: 100,
        max_unfinished_per_account: 100,
    };

    #[tokio::test]
    async fn inputs_of_tasks_never_committed_are_removed_at_start() {
        let f = SqliteFixture::new();
        {
            let store = f.open().await;
            store.create(new_task("waiting"), LOOSE).await.unwrap();
            // What a crash between writing an input and committing its task leaves behind.
            std::fs::write(store.inputs.dir.join("never-committed"), b"x").unwrap();
            std::fs::write(store.inputs.dir.join("cut-off.partial"), b"x").unwrap();
        }
        let store = f.open().await;
        assert_eq!(f.input_count().await, 1);
        let claimed = store.claim(&Models::Any, Duration::from_secs(60), 3).await;
        assert_eq!(claimed.unwrap().unwrap().input, b"waiting");
    }

    /// A file written by the first version (no models, no delivery claims) is brought up to
    /// date; its tasks have model '' and go to workers serving any model.
    #[tokio::test]
    async fn a_version_1_file_is_upgraded() {
        let f = SqliteFixture::new();
        std::fs::create_dir_all(f.path().parent().unwrap()).unwrap();
        let connect = SqliteConnectOptions::new()
            .filename(f.path())
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(connect).await.unwrap();
        sqlx::raw_sql(MIGRATIONS[0]).execute(&pool).await.unwrap();
        sqlx::raw_sql(
            "PRAGMA user_version = 1; \
             INSERT INTO tasks (id, account, status, spec, created_at, updated_at) \
             VALUES ('old', 'acme', 'submitted', '{}', 1, 1);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        std::fs::create_dir_all(f.path().with_extension("inputs")).unwrap();
        std::fs::write(f.path().with_extension("inputs").join("old"), b"img").unwrap();

        let store = f.open().await;
        let only = Models::Only(vec!["infill".into()]);
        let lease = Duration::from_secs(60);
        assert!(store.claim(&only, lease, 3).await.unwrap().is_none());
        let claimed = store.claim(&Models::Any, lease, 3).await.unwrap().unwrap();
        assert_eq!(
            (claimed.task.model.as_str(), &claimed.input[..]),
            ("", &b"img"[..])
        );
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let f = SqliteFixture::new();
        let store = f.open().await;
        sqlx::raw_sql("PRAGMA user_version = 99")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;
        drop(store);
        let options = SqliteOptions {
            path: f.path(),
            durable_commits: false,
        };
        let err = SqliteStore::open(options, Arc::new(|_: &Task| String::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Database(ref msg) if msg.contains("schema version 99")));
    }

    #[tokio::test]
    async fn odd_rows_are_errors_not_panics() {
        let f = SqliteFixture::new();
        let store = f.open().await;
        store.create(new_task("t1"), LOOSE).await.unwrap();
        store.create(new_task("t2"), LOOSE).await.unwrap();
        sqlx::raw_sql(
            "UPDATE tasks SET status = 'weird' WHERE id = 't1'; \
             UPDATE tasks SET attempts = -1 WHERE id = 't2';",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        for id in ["t1", "t2"] {
            let err = store.find("acme", id).await.unwrap_err();
            assert!(matches!(err, StoreError::Database(_)), "{id}: {err:?}");
        }
        assert!(matches!(
            store.list("acme", 1, 10).await,
            Err(StoreError::Database(_))
        ));
        assert!(matches!(store.stats().await, Err(StoreError::Database(_))));
    }
}
