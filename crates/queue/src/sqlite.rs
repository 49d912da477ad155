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
//! `due_deliveries`) use a separate pool and, thanks to WAL, never wait for a writer.
//!
//! Checkpoints (copying the WAL back into the main file, and with it a sync of the file) run
//! on a connection of their own a few times a second instead of inside whichever commit
//! crosses SQLite's threshold: with ~300 KB inputs that threshold is crossed every dozen
//! creates, and the unlucky create waited for the whole copy. Measured with
//! `examples/create_load.rs` (64 clients, 300 KB inputs, `synchronous=FULL`, a shared 2-core
//! machine), create throughput went from 200-340/s to 530-670/s.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::{
    Admission, CallbackRenderer, Claimed, Delivery, Lease, NewTask, QueueStats, Store, StoreError,
    Task, TaskStatus, now_ms,
};

/// The schema version this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

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

const SCHEMA: &str = "
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
";

/// The `tasks` columns that make a [`Task`], in the order [`task_from_row`] reads them.
macro_rules! task_columns {
    () => {
        "id, account, external_task_id, callback_url, status, status_msg, spec, result, \
         attempts, progress, created_at, updated_at"
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
        let limit = |max: u64| i64::try_from(max).unwrap_or(i64::MAX);
        // created_at is read inside the statement, under the write lock, so that tasks are
        // ordered as they were committed.
        let inserted: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO tasks (id, account, external_task_id, callback_url, status, spec, \
             attempts, not_before, created_at, updated_at) \
             SELECT ?1, ?2, ?3, ?4, 'submitted', ?5, 0, 0, now, now \
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
        self.inputs.remove(&task.id).await;
        Ok(task)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, mut task: NewTask, admission: Admission) -> Result<Task, StoreError> {
        // Written before the write lock is taken, so other writers do not wait for the disk.
        let input = std::mem::take(&mut task.input);
        self.inputs.write(&task.id, input).await?;
        let created = self.insert(&task, admission).await;
        if created.is_err() {
            self.inputs.remove(&task.id).await;
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
        lease_for: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError> {
        // Zero attempts would fail every task unseen; one is the least that makes sense.
        let max_attempts = i64::from(max_attempts.max(1));
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // Tasks ended here; their inputs are deleted once that is committed.
        let mut given_up = Vec::new();
        let claimed = loop {
            // Oldest first over both kinds of claimable task. rowid breaks ties within a
            // millisecond: it only grows, and it ends every index entry, so both queries
            // walk `tasks_status_created` in order.
            let waiting = sqlx::query(
                "SELECT id, attempts, created_at, rowid, FALSE FROM tasks \
                 WHERE status = 'submitted' AND not_before <= ?1 \
                 ORDER BY created_at, rowid LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let abandoned = sqlx::query(
                "SELECT id, attempts, created_at, rowid, TRUE FROM tasks \
                 WHERE status = 'processing' AND lease_until < ?1 \
                 ORDER BY created_at, rowid LIMIT 1",
            )
            .bind(now)
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
                let why = if lease_expired {
                    "the worker stopped before finishing each time"
                } else {
                    "each attempt ended without a result"
                };
                let reason = format!("gave up after {attempts} attempts: {why}");
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
        for id in &given_up {
            self.inputs.remove(id).await;
        }
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_for: Duration,
        progress: Option<f32>,
    ) -> Result<(), StoreError> {
        let progress = progress
            .filter(|p| p.is_finite())
            .map(|p| f64::from(p.clamp(0.0, 1.0)));
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

    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, task_id, url, body, attempts, created_at FROM deliveries \
             WHERE next_at <= ?1 ORDER BY created_at, rowid LIMIT ?2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Delivery {
                    id: row.try_get(0)?,
                    task_id: row.try_get(1)?,
                    url: row.try_get(2)?,
                    body: row.try_get(3)?,
                    attempts: attempts_from(row.try_get(4)?)?,
                    created_at: row.try_get(5)?,
                })
            })
            .collect()
    }

    async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM deliveries WHERE id = ?1")
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
            "UPDATE deliveries SET attempts = attempts + 1, next_at = ?1, last_error = ?2 \
             WHERE id = ?3",
        )
        .bind(next_at_ms)
        .bind(error)
        .bind(delivery_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        if let Some(row) = row {
            let task_id: String = row.try_get(0)?;
            let url: String = row.try_get(1)?;
            let attempts: i64 = row.try_get(2)?;
            let created_at: i64 = row.try_get(3)?;
            tracing::warn!(
                delivery_id,
                task_id,
                url,
                attempts,
                age_s = now_ms().saturating_sub(created_at) / 1000,
                error,
                "callback delivery abandoned"
            );
        }
        Ok(())
    }
}

/// A task [`Store::claim`] may take next.
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
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
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
        id,
    })
}

fn attempts_from(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Database(format!("attempt count {value} out of range")))
}

/// A `COUNT(*)` as u64 (it is never negative).
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        task_id: lease.task_id.clone(),
    }
}

fn open_error(path: &Path, err: &sqlx::Error) -> StoreError {
    StoreError::Database(format!("cannot open {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;

    const LOOSE: Admission = Admission {
        max_queued: 1000,
        max_unfinished_per_account: 1000,
    };
    const LEASE: Duration = Duration::from_secs(60);
    /// Long enough to outlast a short lease after a sleep of `SHORT_WAIT`.
    const SHORT_LEASE: Duration = Duration::from_millis(100);
    const SHORT_WAIT: Duration = Duration::from_millis(150);

    /// A store in a fresh folder (the folder itself is created by `open`).
    async fn store() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        (dir, store)
    }

    async fn open_in(dir: &TempDir) -> SqliteStore {
        let options = SqliteOptions {
            path: dir.path().join("data").join("tasks.sqlite"),
            durable_commits: true,
        };
        let renderer: CallbackRenderer =
            Arc::new(|task: &Task| format!("{}:{}", task.id, task.status.as_str()));
        SqliteStore::open(options, renderer).await.unwrap()
    }

    fn new_task(id: &str, account: &str) -> NewTask {
        NewTask {
            id: id.to_owned(),
            account: account.to_owned(),
            external_task_id: None,
            callback_url: None,
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

    async fn create(store: &SqliteStore, task: NewTask) -> Task {
        store.create(task, LOOSE).await.unwrap()
    }

    async fn claim(store: &SqliteStore) -> Claimed {
        store
            .claim(LEASE, 3)
            .await
            .unwrap()
            .expect("a claimable task")
    }

    async fn status(store: &SqliteStore, id: &str) -> Task {
        store.find("acme", id).await.unwrap().expect("task exists")
    }

    /// Bodies of the due deliveries, oldest first.
    async fn due_bodies(store: &SqliteStore) -> Vec<String> {
        let due = store.due_deliveries(now_ms(), 100).await.unwrap();
        due.into_iter().map(|d| d.body).collect()
    }

    /// Input files on disk.
    async fn input_count(store: &SqliteStore) -> i64 {
        std::fs::read_dir(&store.inputs.dir).map_or(0, |entries| entries.count() as i64)
    }

    #[tokio::test]
    async fn create_then_find_by_id_and_external_id() {
        let (_dir, store) = store().await;
        let before = now_ms();
        let created = create(
            &store,
            NewTask {
                external_task_id: Some("mine-1".into()),
                ..new_task("t1", "acme")
            },
        )
        .await;
        assert_eq!(created.status, TaskStatus::Submitted);
        assert_eq!(created.attempts, 0);
        assert!(created.created_at >= before);
        assert_eq!(created.created_at, created.updated_at);

        assert_eq!(
            store.find("acme", "t1").await.unwrap(),
            Some(created.clone())
        );
        assert_eq!(store.find("acme", "mine-1").await.unwrap(), Some(created));
        assert_eq!(store.find("acme", "nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn another_account_cannot_see_a_task() {
        let (_dir, store) = store().await;
        create(
            &store,
            NewTask {
                external_task_id: Some("mine-1".into()),
                ..new_task("t1", "acme")
            },
        )
        .await;
        assert_eq!(store.find("other", "t1").await.unwrap(), None);
        assert_eq!(store.find("other", "mine-1").await.unwrap(), None);
        assert!(store.list("other", 1, 30).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn external_id_is_unique_per_account_only() {
        let (_dir, store) = store().await;
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
    }

    #[tokio::test]
    async fn list_is_newest_first_with_paging() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn queue_full_counts_waiting_tasks_of_all_accounts() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn account_busy_counts_the_accounts_unfinished_tasks() {
        let (_dir, store) = store().await;
        let admission = Admission {
            max_queued: 100,
            max_unfinished_per_account: 2,
        };
        store
            .create(new_task("t1", "acme"), admission)
            .await
            .unwrap();
        store
            .create(new_task("t2", "acme"), admission)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn claim_takes_the_oldest_first() {
        let (_dir, store) = store().await;
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
        assert!(store.claim(LEASE, 3).await.unwrap().is_none());
        assert_eq!(
            store.stats().await.unwrap(),
            QueueStats {
                processing: 3,
                ..QueueStats::default()
            }
        );
    }

    #[tokio::test]
    async fn expired_lease_is_claimed_again_and_the_old_lease_is_lost() {
        let (_dir, store) = store().await;
        create(&store, new_task("t1", "acme")).await;
        let first = store.claim(SHORT_LEASE, 3).await.unwrap().unwrap();
        // Still held: nothing to claim.
        assert!(store.claim(LEASE, 3).await.unwrap().is_none());
        tokio::time::sleep(SHORT_WAIT).await;

        let second = claim(&store).await;
        assert_eq!(second.task.id, "t1");
        assert_eq!(second.task.attempts, 2);
        assert_ne!(second.lease.token, first.lease.token);
        assert_eq!(second.input, b"t1");

        let lost = store.heartbeat(&first.lease, LEASE, Some(0.5)).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost { ref task_id }) if task_id == "t1"));
        let lost = store.succeed(&first.lease, "{}".into()).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost { .. })));
        let lost = store.fail(&first.lease, "x".into()).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost { .. })));
        let lost = store.release(&first.lease, Duration::ZERO, true).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost { .. })));

        // The new holder is unaffected.
        store
            .heartbeat(&second.lease, LEASE, Some(0.25))
            .await
            .unwrap();
        assert_eq!(status(&store, "t1").await.progress, Some(0.25));
        store.succeed(&second.lease, "{}".into()).await.unwrap();
    }

    #[tokio::test]
    async fn heartbeat_keeps_the_lease_and_records_progress_only() {
        let (_dir, store) = store().await;
        create(&store, new_task("t1", "acme")).await;
        let claimed = store.claim(SHORT_LEASE, 3).await.unwrap().unwrap();
        let before = status(&store, "t1").await;
        store
            .heartbeat(&claimed.lease, LEASE, Some(0.5))
            .await
            .unwrap();
        tokio::time::sleep(SHORT_WAIT).await;
        // The lease was extended, so the task is not claimable although SHORT_LEASE ran out.
        assert!(store.claim(LEASE, 3).await.unwrap().is_none());
        store.heartbeat(&claimed.lease, LEASE, None).await.unwrap();
        let after = status(&store, "t1").await;
        assert_eq!(after.progress, Some(0.5));
        assert_eq!(after.updated_at, before.updated_at);
        assert_eq!(after.status, TaskStatus::Processing);

        let gone = Lease {
            task_id: "nope".into(),
            token: claimed.lease.token.clone(),
        };
        assert!(matches!(
            store.heartbeat(&gone, LEASE, None).await,
            Err(StoreError::LeaseLost { .. })
        ));
    }

    #[tokio::test]
    async fn a_task_claimed_max_attempts_times_ends_failed_with_a_reason() {
        let (_dir, store) = store().await;
        create(&store, with_callback("doomed", "acme")).await;
        create(&store, new_task("next", "acme")).await;
        for attempt in 1..=2 {
            let claimed = store.claim(SHORT_LEASE, 2).await.unwrap().unwrap();
            assert_eq!(claimed.task.id, "doomed");
            assert_eq!(claimed.task.attempts, attempt);
            tokio::time::sleep(SHORT_WAIT).await;
        }
        // The third claim gives "doomed" up and hands out the next task instead.
        let claimed = store.claim(LEASE, 2).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, "next");

        let doomed = status(&store, "doomed").await;
        assert_eq!(doomed.status, TaskStatus::Failed);
        assert_eq!(
            doomed.status_msg.as_deref(),
            Some("gave up after 2 attempts: the worker stopped before finishing each time")
        );
        assert_eq!(
            due_bodies(&store).await,
            ["doomed:processing", "doomed:processing", "doomed:failed"]
        );
        assert_eq!(
            input_count(&store).await,
            1,
            "only the claimed task keeps its input"
        );
    }

    #[tokio::test]
    async fn succeed_records_the_result_and_drops_the_input() {
        let (_dir, store) = store().await;
        let created = create(&store, new_task("t1", "acme")).await;
        let claimed = claim(&store).await;
        let done = store
            .succeed(&claimed.lease, "{\"images\":[]}".into())
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Succeed);
        assert_eq!(done.result.as_deref(), Some("{\"images\":[]}"));
        assert_eq!(done.status_msg, None);
        assert!(done.updated_at >= created.updated_at);
        assert_eq!(status(&store, "t1").await, done);
        assert_eq!(input_count(&store).await, 0);
        // Finished: no second ending, not claimable.
        assert!(matches!(
            store.fail(&claimed.lease, "late".into()).await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert!(store.claim(LEASE, 3).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn fail_records_the_reason_and_drops_the_input() {
        let (_dir, store) = store().await;
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
        assert_eq!(input_count(&store).await, 0);
        assert_eq!(store.stats().await.unwrap().failed, 1);
    }

    #[tokio::test]
    async fn release_without_counting_the_attempt() {
        let (_dir, store) = store().await;
        create(&store, with_callback("t1", "acme")).await;
        let claimed = claim(&store).await;
        store
            .release(&claimed.lease, Duration::ZERO, false)
            .await
            .unwrap();
        let released = status(&store, "t1").await;
        assert_eq!(released.status, TaskStatus::Submitted);
        assert_eq!(released.attempts, 0);
        assert!(matches!(
            store.heartbeat(&claimed.lease, LEASE, None).await,
            Err(StoreError::LeaseLost { .. })
        ));

        let again = claim(&store).await;
        assert_eq!(again.task.attempts, 1);
        assert_eq!(again.input, b"t1");
        // Callbacks on processing only, none on the release.
        assert_eq!(due_bodies(&store).await, ["t1:processing", "t1:processing"]);
    }

    #[tokio::test]
    async fn released_task_waits_for_its_delay_and_keeps_the_attempt() {
        let (_dir, store) = store().await;
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
        assert!(store.claim(LEASE, 3).await.unwrap().is_none());
        tokio::time::sleep(SHORT_WAIT).await;
        let again = claim(&store).await;
        assert_eq!(again.task.id, "t1");
        assert_eq!(again.task.attempts, 2);
    }

    #[tokio::test]
    async fn deliveries_are_written_only_with_a_callback_url() {
        let (_dir, store) = store().await;
        create(&store, with_callback("ok", "acme")).await;
        create(&store, with_callback("bad", "acme")).await;
        create(&store, new_task("quiet", "acme")).await;
        assert!(due_bodies(&store).await.is_empty(), "no callback on submit");

        let ok = claim(&store).await;
        let bad = claim(&store).await;
        let quiet = claim(&store).await;
        store.succeed(&ok.lease, "{}".into()).await.unwrap();
        store.fail(&bad.lease, "no".into()).await.unwrap();
        store.succeed(&quiet.lease, "{}".into()).await.unwrap();

        let due = store.due_deliveries(now_ms(), 100).await.unwrap();
        let seen: Vec<_> = due
            .iter()
            .map(|d| (d.task_id.as_str(), d.url.as_str(), d.body.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("ok", "https://hooks.example/ok", "ok:processing"),
                ("bad", "https://hooks.example/bad", "bad:processing"),
                ("ok", "https://hooks.example/ok", "ok:succeed"),
                ("bad", "https://hooks.example/bad", "bad:failed"),
            ]
        );
        assert!(due.iter().all(|d| d.attempts == 0));
        let mut ids: Vec<_> = due.iter().map(|d| d.id.clone()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 4, "each delivery has its own id");
    }

    #[tokio::test]
    async fn deliveries_retry_deliver_and_abandon() {
        let (_dir, store) = store().await;
        for id in ["a", "b", "c"] {
            create(&store, with_callback(id, "acme")).await;
            claim(&store).await;
        }
        let now = now_ms();
        let due = store.due_deliveries(now, 100).await.unwrap();
        assert_eq!(due.len(), 3);
        assert_eq!(store.due_deliveries(now, 2).await.unwrap(), due[..2]);
        let (a, b, c) = (&due[0], &due[1], &due[2]);

        store.delivered(&a.id).await.unwrap();
        store
            .retry_delivery(&b.id, now + 60_000, "connection refused")
            .await
            .unwrap();
        let still_due = store.due_deliveries(now, 100).await.unwrap();
        assert_eq!(still_due, std::slice::from_ref(c));

        let later = store.due_deliveries(now + 60_000, 100).await.unwrap();
        let retried = later.iter().find(|d| d.id == b.id).unwrap();
        assert_eq!(retried.attempts, 1);
        assert_eq!(retried.body, b.body);
        assert_eq!(retried.created_at, b.created_at);
        let last_error: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM deliveries WHERE id = ?1")
                .bind(&b.id)
                .fetch_one(&store.reader)
                .await
                .unwrap();
        assert_eq!(last_error.as_deref(), Some("connection refused"));

        store.abandon_delivery(&b.id, "HTTP 500").await.unwrap();
        store.delivered(&c.id).await.unwrap();
        assert!(
            store
                .due_deliveries(i64::MAX, 100)
                .await
                .unwrap()
                .is_empty()
        );
        // Unknown ids (purged meanwhile) are no error.
        store.delivered("gone").await.unwrap();
        store.retry_delivery("gone", now, "x").await.unwrap();
        store.abandon_delivery("gone", "x").await.unwrap();
    }

    #[tokio::test]
    async fn purge_finished_returns_ids_and_keeps_unfinished_tasks() {
        let (_dir, store) = store().await;
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
        let mut purged = store.purge_finished(now_ms() + 1).await.unwrap();
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
        assert_eq!(due_bodies(&store).await, ["running:processing"]);
        assert_eq!(
            store.stats().await.unwrap(),
            QueueStats {
                submitted: 1,
                processing: 1,
                ..QueueStats::default()
            }
        );
    }

    #[tokio::test]
    async fn inputs_of_tasks_never_committed_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_in(&dir).await;
            create(&store, new_task("waiting", "acme")).await;
            // What a crash between writing an input and committing its task leaves behind.
            std::fs::write(store.inputs.dir.join("never-committed"), b"x").unwrap();
            std::fs::write(store.inputs.dir.join("cut-off.partial"), b"x").unwrap();
        }
        let store = open_in(&dir).await;
        assert_eq!(input_count(&store).await, 1);
        assert_eq!(claim(&store).await.input, b"waiting");
    }

    #[tokio::test]
    async fn a_refused_create_leaves_no_input_behind() {
        let (_dir, store) = store().await;
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
        assert_eq!(input_count(&store).await, 1);
    }

    #[tokio::test]
    async fn reopening_the_file_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (succeeded, running) = {
            let store = open_in(&dir).await;
            create(
                &store,
                NewTask {
                    external_task_id: Some("ext".into()),
                    ..with_callback("done", "acme")
                },
            )
            .await;
            create(&store, new_task("running", "acme")).await;
            create(&store, new_task("waiting", "acme")).await;
            let done = claim(&store).await;
            let succeeded = store.succeed(&done.lease, "{}".into()).await.unwrap();
            let running = store.claim(SHORT_LEASE, 3).await.unwrap().unwrap();
            // Dropped without `close`, as a killed process would leave it.
            (succeeded, running)
        };

        let store = open_in(&dir).await;
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
            due_bodies(&store).await,
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
        assert!(matches!(
            store.heartbeat(&running.lease, LEASE, None).await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert_eq!(claim(&store).await.task.id, "waiting");
        store.close().await;
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        sqlx::raw_sql("PRAGMA user_version = 99")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;
        drop(store);
        let options = SqliteOptions {
            path: dir.path().join("data").join("tasks.sqlite"),
            durable_commits: false,
        };
        let err = SqliteStore::open(options, Arc::new(|_: &Task| String::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Database(ref msg) if msg.contains("schema version 99")));
    }

    #[tokio::test]
    async fn odd_rows_are_errors_not_panics() {
        let (_dir, store) = store().await;
        create(&store, new_task("t1", "acme")).await;
        create(&store, new_task("t2", "acme")).await;
        sqlx::query("UPDATE tasks SET status = 'weird' WHERE id = 't1'")
            .execute(&store.writer)
            .await
            .unwrap();
        sqlx::query("UPDATE tasks SET attempts = -1 WHERE id = 't2'")
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_all_succeed() {
        let (_dir, store) = store().await;
        let store = Arc::new(store);
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
        let claimed = claim(&store).await;
        assert_eq!(claimed.input.len(), 300 * 1024);
    }
}
