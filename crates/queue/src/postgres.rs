//! [`PostgresStore`]: one queue shared by several API and worker nodes, on PostgreSQL.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::{ConnectOptions, Connection, Row, Transaction};
use uuid::Uuid;

use crate::common::{
    attempts_from, clamp_progress, count, gave_up_reason, lease_lost, limit, log_abandoned, millis,
    one_per_task,
};
use crate::wake::{Wakers, due_in, sleep_until_woken};
use crate::{
    Admission, CallbackOutbox, CallbackRenderer, Claimed, Delivery, Lease, Models, NewTask,
    QueueStats, StoreError, Task, TaskStatus, TaskStore, WorkerRegistry,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The transaction-level advisory lock under which creates check the admission limits (an
/// arbitrary constant, unlikely to clash with another application's lock in the database).
pub const ADMISSION_LOCK: i64 = 0x6f75_7470_6169_6e74; // "outpaint"

/// Notification channels, as the migration's triggers name them.
const WORK_CHANNEL: &str = "outpaint_work";
const DELIVERIES_CHANNEL: &str = "outpaint_deliveries";

/// How long a statement waits for a free pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tasks` columns that make a [`Task`], in the order [`task_from_row`] reads them.
macro_rules! task_columns {
    () => {
        "id, account, external_task_id, callback_url, status, status_msg, spec, result, \
         attempts, progress, created_at, updated_at, model"
    };
}

/// Whether a task's `model` is in the array bound as `$N` (NULL: any model).
macro_rules! model_filter {
    ($n:literal) => {
        concat!(
            "($",
            $n,
            "::text[] IS NULL OR model = ANY($",
            $n,
            "::text[]))"
        )
    };
}

/// How to reach the PostgreSQL store.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database?sslmode=...`, as libpq takes it.
    pub url: String,
    /// Pooled connections for statements (one more is opened for notifications). Each node
    /// holds up to this many: keep the sum over nodes under the server's `max_connections`.
    pub max_connections: u32,
}

impl std::fmt::Debug for PostgresOptions {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            Ok(url) => url.to_string(),
            Err(_) => "(unparsable URL)".to_string(),
        };
        f.debug_struct("PostgresOptions")
            .field("url", &url)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The shared store: every API and worker node connects to one PostgreSQL database.
///
/// The schema is `migrations/postgres/` (applied by [`PostgresStore::connect`]). The decisions
/// behind it:
///
/// - **Claims** lock the oldest claimable row with `FOR UPDATE SKIP LOCKED`: workers on many
///   nodes never wait for each other nor take the same task, and a row that another claim
///   changed meanwhile is checked again by PostgreSQL before it is locked. A lease is a random
///   token and an expiry on the task row; every write of a leased task names the token.
/// - **Time** is the database's (`outpaint_now_ms()`, Unix ms of the transaction's start), so
///   that nodes with skewed clocks agree on leases and retry times.
/// - **Admission** (queue length, unfinished tasks per account) is checked by the `INSERT ...
///   SELECT ... WHERE count < limit` itself, under a transaction-level advisory lock
///   ([`ADMISSION_LOCK`]) taken by the statement before it. Under READ COMMITTED the insert's
///   snapshot is taken after the lock is held, so it sees every create committed before, and
///   two API nodes cannot both admit the last place. Only creates take the lock, for one
///   statement and the commit; the input bytes are written before it (their key to the task is
///   checked at commit).
/// - **`external_task_id`** is unique per account by a constraint; its violation is
///   [`StoreError::ExternalIdTaken`].
/// - **Inputs** live in `task_inputs` (bytea, stored uncompressed out of line) until the task
///   finishes: written in the create's transaction, so a task never lacks its input and a
///   refused one leaves nothing behind. Results are not the store's business.
/// - **Wake-ups**: triggers `NOTIFY outpaint_work` when a task becomes `submitted` and `NOTIFY
///   outpaint_deliveries` when a delivery is written, retried or removed; each store listens on
///   one connection of its own and wakes its waiters, which then query what is due (leases and
///   retry delays that run out are timers, not notifications). A lost listening connection is
///   re-opened, and every waiter looks again, since notifications sent meanwhile are lost.
/// - **Callbacks** are claimed like tasks (`SKIP LOCKED`, a lease in `claimed_until`), one per
///   task at a time, so that each status change is sent by one node.
/// - **Models**: each task has a `model` column; a worker claims with the list it serves
///   (`model = ANY($1)`). Live workers are rows in `workers` (their models, an expiry renewed by
///   the worker), from which [`WorkerRegistry::unserved`] counts queued tasks nobody serves.
/// - **Migrations** run at start on a connection of their own. sqlx's migrator holds a
///   session advisory lock (keyed by the database's name) while it checks and applies them, so
///   nodes that start together apply each migration once, the others waiting and then finding
///   the schema current; the lock goes with the connection, even when a migration fails.
///
/// Connections: `max_connections` in the pool for statements, plus one for notifications.
/// Creates hold the admission lock for one round trip and a commit each: creates across the
/// cluster are serialized at that rate; claims, heartbeats and reads take no cluster-wide lock.
pub struct PostgresStore {
    pool: PgPool,
    renderer: CallbackRenderer,
    wakers: Arc<Wakers>,
    /// Turns notifications into wake-ups; stopped when the store is dropped.
    listen_task: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listen_task.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, brings the schema up to date (safe when several nodes start at once), and
    /// starts listening for wake-ups. `renderer` writes the body of each callback delivery.
    ///
    /// Fails when the URL is malformed, the server cannot be reached or refuses the login, or
    /// the database's schema was changed by a newer or different version of this store.
    pub async fn connect(
        options: PostgresOptions,
        renderer: CallbackRenderer,
    ) -> Result<PostgresStore, StoreError> {
        let context = |err: &dyn std::fmt::Display| {
            StoreError::Database(format!("PostgreSQL {options:?}: {err}"))
        };
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|err| context(&err))?
            .application_name("outpaint");
        // Not pooled: the migrator's session lock goes when this connection closes, whatever
        // happens in between.
        let mut migrating = connect.connect().await.map_err(|err| context(&err))?;
        let migrated = MIGRATOR.run(&mut migrating).await;
        let _ = migrating.close().await;
        migrated.map_err(|err| context(&format!("migrating the schema: {err}")))?;

        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone())
            .await
            .map_err(|err| context(&err))?;
        let listening = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(connect);
        let mut listener = PgListener::connect_with(&listening)
            .await
            .map_err(|err| context(&err))?;
        listener
            .listen_all([WORK_CHANNEL, DELIVERIES_CHANNEL])
            .await
            .map_err(|err| context(&err))?;
        let wakers = Arc::new(Wakers::default());
        Ok(PostgresStore {
            pool,
            renderer,
            listen_task: tokio::spawn(listen_task(listener, Arc::clone(&wakers))),
            wakers,
        })
    }

    /// Closes every connection, waiting for statements in flight.
    pub async fn close(&self) {
        self.listen_task.abort();
        self.pool.close().await;
    }

    /// Queues a callback of `task` as it is now, when it has a callback URL.
    async fn record_delivery(
        &self,
        conn: &mut PgConnection,
        task: &Task,
    ) -> Result<(), StoreError> {
        let Some(url) = &task.callback_url else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO deliveries (id, task_id, url, body, next_at, created_at) \
             VALUES ($1, $2, $3, $4, outpaint_now_ms(), outpaint_now_ms())",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&task.id)
        .bind(url)
        .bind((self.renderer)(task))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Ends a locked task `failed` with `reason` outside any lease: the claim loop's way to
    /// drop tasks it will not hand out.
    async fn give_up(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        task_id: &str,
        reason: String,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(concat!(
            "WITH ended AS (UPDATE tasks SET status = 'failed', status_msg = $1, \
             lease_token = NULL, lease_until = NULL, updated_at = outpaint_now_ms() \
             WHERE id = $2 RETURNING ",
            task_columns!(),
            "), dropped AS (DELETE FROM task_inputs WHERE task_id IN (SELECT id FROM ended)) \
             SELECT * FROM ended"
        ))
        .bind(reason)
        .bind(task_id)
        .fetch_one(&mut **tx)
        .await?;
        let task = task_from_row(&row)?;
        self.record_delivery(tx, &task).await
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "WITH ended AS (UPDATE tasks SET status = $1, result = $2, status_msg = $3, \
             progress = CASE WHEN $1 = 'succeed' THEN 1.0 ELSE progress END, \
             lease_token = NULL, lease_until = NULL, updated_at = outpaint_now_ms() \
             WHERE id = $4 AND lease_token = $5 AND status = 'processing' RETURNING ",
            task_columns!(),
            "), dropped AS (DELETE FROM task_inputs WHERE task_id IN (SELECT id FROM ended)) \
             SELECT * FROM ended"
        ))
        .bind(status.as_str())
        .bind(result)
        .bind(reason)
        .bind(&lease.task_id)
        .bind(&lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(lease_lost(lease));
        };
        let task = task_from_row(&row)?;
        self.record_delivery(&mut tx, &task).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Which admission limit refused a create.
    async fn refusal(&self, account: &str, admission: Admission) -> Result<StoreError, StoreError> {
        let (queued, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'submitted'), \
             (SELECT COUNT(*) FROM tasks \
              WHERE account = $1 AND status IN ('submitted', 'processing'))",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        Ok(
            if count(unfinished) >= admission.max_unfinished_per_account
                && count(queued) < admission.max_queued
            {
                StoreError::AccountBusy {
                    max: admission.max_unfinished_per_account,
                }
            } else {
                // Also when both counts fell between the insert and this read.
                StoreError::QueueFull {
                    max: admission.max_queued,
                }
            },
        )
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn create(&self, task: NewTask, admission: Admission) -> Result<Task, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "WITH input AS (INSERT INTO task_inputs (task_id, bytes) VALUES ($1, $2)) \
             SELECT pg_advisory_xact_lock($3)",
        )
        .bind(&task.id)
        .bind(&task.input)
        .bind(ADMISSION_LOCK)
        .execute(&mut *tx)
        .await?;
        // A new statement, so a new snapshot: it sees every create committed before the lock.
        let inserted = sqlx::query(concat!(
            "INSERT INTO tasks (id, account, external_task_id, callback_url, model, status, \
             spec, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, 'submitted', $6, now, now \
             FROM (SELECT outpaint_now_ms() AS now) AS clock \
             WHERE (SELECT COUNT(*) FROM tasks WHERE status = 'submitted') < $7 \
             AND (SELECT COUNT(*) FROM tasks \
                  WHERE account = $2 AND status IN ('submitted', 'processing')) < $8 \
             RETURNING ",
            task_columns!()
        ))
        .bind(&task.id)
        .bind(&task.account)
        .bind(&task.external_task_id)
        .bind(&task.callback_url)
        .bind(&task.model)
        .bind(&task.spec)
        .bind(limit(admission.max_queued))
        .bind(limit(admission.max_unfinished_per_account))
        .fetch_optional(&mut *tx)
        .await;
        match inserted {
            Ok(Some(row)) => {
                let created = task_from_row(&row)?;
                tx.commit().await?;
                Ok(created)
            }
            Ok(None) => {
                tx.rollback().await?;
                Err(self.refusal(&task.account, admission).await?)
            }
            Err(err)
                if err
                    .as_database_error()
                    .and_then(|e| e.constraint())
                    .is_some_and(|c| c == "tasks_external_id_unique") =>
            {
                Err(StoreError::ExternalIdTaken(
                    task.external_task_id.unwrap_or_default(),
                ))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn find(&self, account: &str, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE account = $1 AND (id = $2 OR external_task_id = $2) \
             ORDER BY id = $2 DESC LIMIT 1"
        ))
        .bind(account)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
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
            " FROM tasks WHERE account = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"
        ))
        .bind(account)
        .bind(i64::from(page_size))
        .bind(offset)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let claimed = loop {
            let candidate = sqlx::query(concat!(
                "SELECT id, attempts, status = 'processing' FROM tasks \
                 WHERE status IN ('submitted', 'processing') \
                 AND (status = 'submitted' AND not_before <= outpaint_now_ms() \
                      OR status = 'processing' AND lease_until < outpaint_now_ms()) \
                 AND ",
                model_filter!(1),
                " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ))
            .bind(models.names())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(candidate) = candidate else {
                break None;
            };
            let id: String = candidate.try_get(0)?;
            let attempts = i64::from(candidate.try_get::<i32, _>(1)?);
            if attempts >= max_attempts {
                let reason = gave_up_reason(attempts, candidate.try_get(2)?);
                self.give_up(&mut tx, &id, reason).await?;
                continue;
            }
            let input: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT bytes FROM task_inputs WHERE task_id = $1")
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(input) = input else {
                // Cannot happen through this store; failing the task keeps the queue moving.
                tracing::error!(task_id = %id, "task has no input in the store");
                let reason = "the task's input is missing from the task store".to_owned();
                self.give_up(&mut tx, &id, reason).await?;
                continue;
            };
            let token = Uuid::new_v4().to_string();
            let row = sqlx::query(concat!(
                "UPDATE tasks SET status = 'processing', attempts = attempts + 1, \
                 lease_token = $1, lease_until = outpaint_now_ms() + $2, progress = NULL, \
                 status_msg = NULL, updated_at = outpaint_now_ms() WHERE id = $3 RETURNING ",
                task_columns!()
            ))
            .bind(&token)
            .bind(millis(lease_for))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            let task = task_from_row(&row)?;
            self.record_delivery(&mut tx, &task).await?;
            break Some(Claimed {
                lease: Lease { task_id: id, token },
                task,
                input,
            });
        };
        tx.commit().await?;
        Ok(claimed)
    }

    async fn wait_for_work(&self, models: &Models, timeout: Duration) -> Result<(), StoreError> {
        let notified = self.wakers.work.notified();
        let due: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT MIN(CASE WHEN status = 'submitted' THEN not_before ELSE lease_until + 1 END) \
             - outpaint_now_ms() FROM tasks WHERE status IN ('submitted', 'processing') AND ",
            model_filter!(1)
        ))
        .bind(models.names())
        .fetch_one(&self.pool)
        .await?;
        sleep_until_woken(notified, due_in(due, 0), timeout).await;
        Ok(())
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_for: Duration,
        progress: Option<f32>,
    ) -> Result<(), StoreError> {
        // An expired lease nobody took yet is still ours: renewing it is harmless.
        let updated = sqlx::query(
            "UPDATE tasks SET lease_until = outpaint_now_ms() + $1, \
             progress = COALESCE($2, progress) \
             WHERE id = $3 AND lease_token = $4 AND status = 'processing'",
        )
        .bind(millis(lease_for))
        .bind(clamp_progress(progress))
        .bind(&lease.task_id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(lease_lost(lease));
        }
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
        // No callback: the SPEC reports processing, succeed and failed only.
        let updated = sqlx::query(
            "UPDATE tasks SET status = 'submitted', not_before = outpaint_now_ms() + $1, \
             attempts = CASE WHEN $2 THEN attempts ELSE GREATEST(attempts - 1, 0) END, \
             lease_token = NULL, lease_until = NULL, progress = NULL, \
             updated_at = outpaint_now_ms() \
             WHERE id = $3 AND lease_token = $4 AND status = 'processing'",
        )
        .bind(millis(delay))
        .bind(count_attempt)
        .bind(&lease.task_id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        let mut stats = QueueStats::default();
        for (status, n) in rows {
            let n = count(n);
            match status.parse()? {
                TaskStatus::Submitted => stats.submitted = n,
                TaskStatus::Processing => stats.processing = n,
                TaskStatus::Succeed => stats.succeed = n,
                TaskStatus::Failed => stats.failed = n,
            }
        }
        Ok(stats)
    }

    async fn purge_finished(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        // Inputs and deliveries go with their task (ON DELETE CASCADE).
        Ok(sqlx::query_scalar(
            "DELETE FROM tasks WHERE status IN ('succeed', 'failed') AND updated_at < $1 \
             RETURNING id",
        )
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[async_trait]
impl CallbackOutbox for PostgresStore {
    async fn claim_deliveries(
        &self,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row's own claim is a plain condition, so PostgreSQL checks it again on a row
        // that another claim changed before this one could lock it.
        let rows = sqlx::query(
            "SELECT id, task_id, url, body, attempts, created_at FROM deliveries d \
             WHERE next_at <= outpaint_now_ms() \
             AND (claimed_until IS NULL OR claimed_until <= outpaint_now_ms()) \
             AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.task_id = d.task_id \
                 AND o.id <> d.id AND o.claimed_until > outpaint_now_ms()) \
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let deliveries = one_per_task(rows.iter().map(delivery_from_row))?;
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        sqlx::query(
            "UPDATE deliveries SET claimed_until = outpaint_now_ms() + $1 WHERE id = ANY($2)",
        )
        .bind(millis(lease_for))
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deliveries)
    }

    async fn wait_for_deliveries(&self, timeout: Duration) -> Result<(), StoreError> {
        let notified = self.wakers.deliveries.notified();
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(d.next_at, claims.until)) - outpaint_now_ms() \
             FROM deliveries d JOIN (SELECT task_id, COALESCE(MAX(claimed_until), 0) AS until \
                 FROM deliveries GROUP BY task_id) AS claims USING (task_id)",
        )
        .fetch_one(&self.pool)
        .await?;
        sleep_until_woken(notified, due_in(due, 0), timeout).await;
        Ok(())
    }

    async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deliveries WHERE id = $1")
            .bind(delivery_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        // A delivery purged meanwhile (its task was purged) is simply not updated.
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, next_at = $1, last_error = $2, \
             claimed_until = NULL WHERE id = $3",
        )
        .bind(next_at_ms)
        .bind(error)
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn abandon_delivery(&self, delivery_id: &str, error: &str) -> Result<(), StoreError> {
        let row: Option<(String, String, i32, i64)> = sqlx::query_as(
            "DELETE FROM deliveries WHERE id = $1 RETURNING task_id, url, attempts, created_at",
        )
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((task_id, url, attempts, created_at)) = row {
            log_abandoned(
                delivery_id,
                task_id,
                url,
                attempts.into(),
                created_at,
                error,
            );
        }
        Ok(())
    }
}

#[async_trait]
impl WorkerRegistry for PostgresStore {
    async fn register_worker(
        &self,
        worker_id: &str,
        models: &Models,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // Workers that stopped without saying so (killed, lost) would pile up otherwise.
        sqlx::query(
            "WITH gone AS (DELETE FROM workers WHERE expires_at <= outpaint_now_ms() \
                 AND id <> $1) \
             INSERT INTO workers (id, models, expires_at) \
             VALUES ($1, $2, outpaint_now_ms() + $3) \
             ON CONFLICT (id) DO UPDATE SET models = excluded.models, \
             expires_at = excluded.expires_at",
        )
        .bind(worker_id)
        .bind(models.names())
        .bind(millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_worker(&self, worker_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn unserved(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT model, COUNT(*) FROM tasks t WHERE status = 'submitted' \
             AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.expires_at > outpaint_now_ms() \
                 AND (w.models IS NULL OR t.model = ANY(w.models))) \
             GROUP BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(m, n)| (m, count(n))).collect())
    }
}

/// Wakes this store's waiters on each notification. A lost connection is opened again by the
/// listener; what was notified meanwhile is lost, so every waiter looks again.
async fn listen_task(mut listener: PgListener, wakers: Arc<Wakers>) {
    let wake_all = || {
        wakers.work.notify_waiters();
        wakers.deliveries.notify_waiters();
    };
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.channel() {
                WORK_CHANNEL => wakers.work.notify_waiters(),
                _ => wakers.deliveries.notify_waiters(),
            },
            Ok(None) => {
                tracing::warn!("task store: the notification connection was lost and reopened");
                wake_all();
            }
            Err(err) => {
                tracing::warn!(error = %err, "task store: cannot listen for notifications");
                wake_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads a row selected with [`task_columns!`].
fn task_from_row(row: &PgRow) -> Result<Task, StoreError> {
    let id: String = row.try_get(0)?;
    let status: String = row.try_get(4)?;
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
        attempts: attempts_from(row.try_get::<i32, _>(8)?.into())?,
        progress: row.try_get(9)?,
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
        model: row.try_get(12)?,
        id,
    })
}

fn delivery_from_row(row: &PgRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.try_get(0)?,
        task_id: row.try_get(1)?,
        url: row.try_get(2)?,
        body: row.try_get(3)?,
        attempts: attempts_from(row.try_get::<i32, _>(4)?.into())?,
        created_at: row.try_get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use outpaint_test_servers::Postgres;

    use super::*;
    use crate::contract::{Fixture, store_contract};

    /// A fresh database on this test binary's server.
    struct PgFixture {
        url: String,
    }

    impl PgFixture {
        fn new() -> PgFixture {
            PgFixture {
                url: Postgres::shared().create_database(),
            }
        }

        fn options(&self) -> PostgresOptions {
            PostgresOptions {
                url: self.url.clone(),
                max_connections: 4,
            }
        }

        async fn admin(&self) -> PgConnection {
            PgConnection::connect(&self.url).await.unwrap()
        }
    }

    #[async_trait(?Send)]
    impl Fixture for PgFixture {
        type Store = PostgresStore;

        async fn open(&self) -> PostgresStore {
            let renderer: CallbackRenderer =
                Arc::new(|task: &Task| format!("{}:{}", task.id, task.status.as_str()));
            PostgresStore::connect(self.options(), renderer)
                .await
                .unwrap()
        }

        async fn input_count(&self) -> u64 {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM task_inputs")
                .fetch_one(&mut self.admin().await)
                .await
                .unwrap();
            count(n)
        }
    }

    store_contract!(PgFixture::new());

    /// A waiter whose notification connection is cut (a failover, a proxy's idle timeout)
    /// looks again at once, and is woken by notifications once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_ups_survive_a_lost_notification_connection() {
        let f = PgFixture::new();
        let (worker, api) = (Arc::new(f.open().await), f.open().await);
        let wait = || {
            let worker = Arc::clone(&worker);
            tokio::spawn(async move {
                let wait = worker.wait_for_work(&Models::Any, Duration::from_secs(60));
                tokio::time::timeout(Duration::from_secs(10), wait).await
            })
        };
        let waiting = wait();
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .execute(&mut f.admin().await)
        .await
        .unwrap();
        assert!(
            matches!(waiting.await.unwrap(), Ok(Ok(()))),
            "woken by the loss"
        );

        let waiting = wait();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished());
        let task = NewTask {
            id: "t1".into(),
            account: "acme".into(),
            external_task_id: None,
            callback_url: None,
            model: "infill".into(),
            spec: "{}".into(),
            input: vec![1],
        };
        let admission = Admission {
            max_queued: 10,
            max_unfinished_per_account: 10,
        };
        api.create(task, admission).await.unwrap();
        assert!(
            matches!(waiting.await.unwrap(), Ok(Ok(()))),
            "woken by the create"
        );
    }

    #[tokio::test]
    async fn a_missing_database_is_a_clear_error() {
        let options = PostgresOptions {
            url: format!(
                "postgres://postgres:secret@127.0.0.1:{}/missing",
                Postgres::shared().port()
            ),
            max_connections: 1,
        };
        let err = PostgresStore::connect(options, Arc::new(|_: &Task| String::new()))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"missing\" does not exist"), "{message}");
        assert!(
            !message.contains("secret"),
            "the password is hidden: {message}"
        );
    }
}
